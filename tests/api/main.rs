//! Black-box tests of rosterd over real HTTP: one test binary, one module
//! per area of the API, the harness in `helpers`.

mod admin;
mod attacks;
mod bad_input;
mod cli;
mod copy_db;
mod crash;
mod errors;
mod event_connections;
mod events;
mod health;
mod helpers;
mod kept;
mod keys;
mod lifecycle;
mod listing;
mod moving_in;
mod nodes;
mod operations;
mod postgres_tls;
mod races;
mod sessions;
mod token;
mod users;
