//! One module per subcommand.
pub mod ask;
pub mod bench;
pub mod fetch;
pub mod serve;
