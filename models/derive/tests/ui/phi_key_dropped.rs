use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct PhiKeyDrop {
    #[key]
    #[phi(drop)]
    mrn: String,
}

fn main() {}
