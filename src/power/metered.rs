//! Every BMC call counted in `rollout_bmc_calls_total{driver, operation, outcome}`:
//! a wrapper around whichever driver a node's `bmc` names.

use super::{driver, PowerDriver, PowerError, PowerState, Target};
use crate::config::BmcDriver;
use crate::metrics::Metrics;
use std::sync::Arc;

/// The `driver` label.
pub fn driver_label(d: BmcDriver) -> &'static str {
    match d {
        BmcDriver::Ipmi => "ipmi",
        BmcDriver::Redfish => "redfish",
        BmcDriver::Wol => "wol",
        BmcDriver::Qmp => "qmp",
    }
}

/// The `outcome` label of a call: `ok` or the kind of error, never its text
/// (which names nodes and addresses: unbounded).
pub fn outcome_label<T>(r: &Result<T, PowerError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(PowerError::Unreachable { .. }) => "unreachable",
        Err(PowerError::BadCredentials { .. }) => "bad_credentials",
        Err(PowerError::Rejected { .. }) => "rejected",
        Err(PowerError::Password { .. }) => "password",
        Err(PowerError::Unsupported { .. }) => "unsupported",
        Err(PowerError::Tool { .. }) => "tool",
    }
}

struct Metered {
    inner: Box<dyn PowerDriver>,
    driver: &'static str,
    metrics: Arc<Metrics>,
}

impl Metered {
    fn count<T>(&self, operation: &'static str, r: Result<T, PowerError>) -> Result<T, PowerError> {
        self.metrics.bmc(self.driver, operation, outcome_label(&r));
        r
    }
}

impl PowerDriver for Metered {
    fn status(&self) -> Result<PowerState, PowerError> {
        self.count("status", self.inner.status())
    }
    fn on(&self) -> Result<(), PowerError> {
        self.count("on", self.inner.on())
    }
    fn off(&self) -> Result<(), PowerError> {
        self.count("off", self.inner.off())
    }
    fn cycle(&self) -> Result<(), PowerError> {
        self.count("cycle", self.inner.cycle())
    }
    fn boot_once_pxe(&self, efi: bool) -> Result<(), PowerError> {
        self.count("boot_once_pxe", self.inner.boot_once_pxe(efi))
    }
}

/// [`driver`], counted. A driver that cannot even be set up (a missing
/// password file, say) is counted as one failed `setup` call.
pub fn metered(t: &Target, metrics: Arc<Metrics>) -> Result<Box<dyn PowerDriver>, PowerError> {
    let label = driver_label(t.bmc.driver);
    match driver(t) {
        Ok(inner) => Ok(Box::new(Metered {
            inner,
            driver: label,
            metrics,
        })),
        Err(e) => {
            metrics.bmc(label, "setup", outcome_label::<()>(&Err(e.clone())));
            Err(e)
        }
    }
}
