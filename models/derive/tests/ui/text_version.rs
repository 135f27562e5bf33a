use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct TextVersion {
    #[key]
    id: String,
    #[version]
    version: String,
}

fn main() {}
