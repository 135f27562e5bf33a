use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct OptKey {
    #[key]
    id: Option<String>,
}

fn main() {}
