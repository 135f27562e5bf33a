use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct PhiKey {
    #[key]
    #[phi]
    mrn: String,
}

fn main() {}
