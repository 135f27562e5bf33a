use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct Big {
    #[key]
    id: String,
    count: u64,
}

fn main() {}
