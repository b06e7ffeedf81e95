//! Black-box tests of rosterd over real HTTP: one test binary, one module
//! per area of the API, the harness in `helpers`.

mod cli;
mod errors;
mod health;
mod helpers;
mod lifecycle;
mod token;
mod users;
