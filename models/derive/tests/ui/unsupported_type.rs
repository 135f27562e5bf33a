use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct Unsupported {
    #[key]
    id: String,
    sizes: std::collections::HashMap<String, u8>,
}

fn main() {}
