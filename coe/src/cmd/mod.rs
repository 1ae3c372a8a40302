//! One module per subcommand.
pub mod ask;
pub mod bench;
pub mod fetch;
pub mod registry_cli;
pub mod router_cli;
pub mod router_serve;
pub mod serve;
pub mod serve_all;
pub mod status;
