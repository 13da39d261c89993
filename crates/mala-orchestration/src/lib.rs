//! The run: scheduler actor, triggers, shutdown stages, resume, and the
//! embedding API. Empty until the run issue lands; it will be the only crate
//! that names `mala-infra` types.
