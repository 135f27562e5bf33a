use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct Rule {
    #[key]
    id: String,
    #[phi(scramble)]
    name: String,
}

fn main() {}
