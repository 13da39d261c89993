//! One module per subcommand.

pub(crate) mod config;
pub(crate) mod dashboard;
pub(crate) mod dry_run;
pub(crate) mod guard;
pub(crate) mod init;
pub(crate) mod locks;
pub(crate) mod logs;
pub(crate) mod run;
