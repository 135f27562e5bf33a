use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct Renamed {
    #[key]
    id: String,
    #[serde(rename = "fullName")]
    full_name: String,
}

fn main() {}
