//! One issue end to end: session runner, gate, review, finalize.
//!
//! Empty until the pipeline issue lands. It will depend on `mala-core` and
//! `mala-domain` only, and reach the world through the ports in `mala-core`.
