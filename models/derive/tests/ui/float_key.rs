use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct FloatKey {
    #[key]
    id: f64,
}

fn main() {}
