use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct TwoKeys {
    #[key]
    a: String,
    #[key]
    b: String,
}

fn main() {}
