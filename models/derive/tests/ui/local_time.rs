use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct Local {
    #[key]
    id: String,
    at: chrono::DateTime<chrono::Local>,
}

fn main() {}
