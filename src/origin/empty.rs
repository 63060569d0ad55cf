//! An origin with nothing in it: for the relay's echo mode (the Autobahn conformance
//! server), which serves no objects but runs the same data plane.

use super::{Listing, Object, Origin, OriginError, OriginFuture};

/// Every object is missing and every listing empty.
pub struct Empty;

impl Origin for Empty {
    fn backend(&self) -> &'static str {
        "none"
    }

    fn get<'a>(&'a self, _key: &'a str, _max_size: u64) -> OriginFuture<'a, Object> {
        Box::pin(std::future::ready(Err(OriginError::NotFound)))
    }

    fn list<'a>(
        &'a self,
        _prefix: &'a str,
        _start_after: Option<&'a str>,
    ) -> OriginFuture<'a, Listing> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn version<'a>(&'a self, _key: &'a str) -> OriginFuture<'a, Option<u64>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn check_ready(&self) -> Result<(), OriginError> {
        Ok(())
    }
}
