use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct Generic<T> {
    #[key]
    id: String,
    value: T,
}

fn main() {}
