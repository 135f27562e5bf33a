use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
#[entity(name = "Patients; DROP TABLE x")]
struct BadName {
    #[key]
    id: String,
}

fn main() {}
