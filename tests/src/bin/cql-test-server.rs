//! A CQL v4 test server: the in-memory `kassandra` engine behind a TCP
//! listener, for the ScyllaDB backend's tests on machines without
//! ScyllaDB. Not a database: one process, memory only, a subset of CQL (see
//! the README for what it lacks and which cases say so).
//!
//! `cql-test-server [--bind 127.0.0.1] [--port 9042]`

use std::sync::{Arc, Mutex};

use futures::{SinkExt as _, StreamExt as _};
use kassandra::error::DbError;
use kassandra::frame::request::Request;
use kassandra::frame::response::Response;
use kassandra::frame::response::error::Error as CqlError;
use kassandra::frame::response::result::QueryResult;
use kassandra::frame::{request_stream, response_sink};
use kassandra::session::KassandraSession;
use tokio::net::{TcpListener, TcpStream};

type Shared = Arc<Mutex<KassandraSession>>;

fn main() -> std::io::Result<()> {
    let mut bind = "127.0.0.1".to_owned();
    let mut port = 9042u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => bind = args.next().unwrap_or(bind),
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => {
                    return Err(std::io::Error::other(
                        "--port takes a number from 1 to 65535",
                    ));
                }
            },
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown argument {other}; usage: cql-test-server [--bind ADDR] [--port N]"
                )));
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind((bind.as_str(), port)).await?;
        eprintln!("cql-test-server: listening on {}", listener.local_addr()?);
        let session: Shared = Arc::new(Mutex::new(KassandraSession::new()));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(Arc::clone(&session), stream));
        }
    })
}

async fn serve(session: Shared, mut stream: TcpStream) {
    let (mut read, mut write) = stream.split();
    let mut requests = request_stream(&mut read);
    let mut responses = response_sink(&mut write);
    // `USE` is per connection in CQL; kassandra keeps one keyspace for its
    // whole session, so each connection's is set before its requests.
    let mut keyspace: Option<String> = None;
    while let Some(frame) = requests.next().await {
        let Ok((frame, opcode, data)) = frame else {
            return;
        };
        let response = match Request::deserialize(opcode, &data, frame.flags) {
            Ok(request) => answer(&session, &mut keyspace, request),
            Err(_) => Response::Error(CqlError::new(
                DbError::ProtocolError,
                "cannot parse the request",
            )),
        };
        if responses.send((response, frame.stream)).await.is_err() {
            return;
        }
    }
}

fn answer(session: &Shared, keyspace: &mut Option<String>, request: Request<'_>) -> Response {
    let mut kassandra = match session.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    // A connection that never chose a keyspace resolves unqualified names
    // in `system` (where the tables it means do not exist).
    kassandra.use_keyspace(keyspace.as_deref().unwrap_or("system"));
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::AuthResponse => {
            return Response::Error(CqlError::new(
                DbError::ProtocolError,
                "authentication is not supported by this test server",
            ));
        }
        Request::Query(q) => kassandra.process(q),
        Request::Prepare(q) => kassandra.prepare(q),
        Request::Execute(e) => kassandra.execute(e),
        Request::Batch(b) => kassandra.process_batch(b),
    };
    if let Ok(QueryResult::SetKeyspace(set)) = &result {
        keyspace.clone_from(&Some(set.keyspace_name.clone()));
    }
    match result {
        Ok(r) => Response::Result(r),
        Err(e) => Response::Error(e),
    }
}
