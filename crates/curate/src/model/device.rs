//! Which burn backend and device run the model: `flex` (pure Rust CPU, always built) or
//! LibTorch on CPU or CUDA (the `tch` cargo feature).

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Flex,
    TchCpu,
    TchCuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "flex" => Ok(DeviceSpec::Flex),
            "tch-cpu" => Ok(DeviceSpec::TchCpu),
            other => match other.strip_prefix("tch-cuda") {
                Some("") => Ok(DeviceSpec::TchCuda(0)),
                Some(index) => index
                    .strip_prefix(':')
                    .and_then(|i| i.parse().ok())
                    .map(DeviceSpec::TchCuda)
                    .ok_or_else(|| format!("bad CUDA device '{other}' (expected tch-cuda:N)")),
                None => Err(format!(
                    "unknown device '{other}' (expected flex, tch-cpu or tch-cuda:N)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Flex => f.write_str("flex"),
            DeviceSpec::TchCpu => f.write_str("tch-cpu"),
            DeviceSpec::TchCuda(i) => write!(f, "tch-cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The burn device, or why this build cannot provide it.
    pub fn device(self) -> Result<Device, String> {
        match self {
            DeviceSpec::Flex => Ok(Device::flex()),
            #[cfg(feature = "tch")]
            DeviceSpec::TchCpu => Ok(tch_device(None)),
            #[cfg(feature = "tch")]
            DeviceSpec::TchCuda(index) => Ok(tch_device(Some(index))),
            #[cfg(not(feature = "tch"))]
            DeviceSpec::TchCpu | DeviceSpec::TchCuda(_) => Err(format!(
                "device '{self}' needs a build with the `tch` feature (cargo build --release --features tch)"
            )),
        }
    }

    /// The device named by `CURATE_TEST_DEVICE`, else flex: lets the same tests run on LibTorch.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("CURATE_TEST_DEVICE") {
            Ok(name) if !name.is_empty() => name.parse(),
            _ => Ok(DeviceSpec::Flex),
        }
    }
}

// burn deprecates its LibTorch backend in 0.22; it stays an opt-in choice here.
#[cfg(feature = "tch")]
#[allow(deprecated)]
fn tch_device(cuda: Option<usize>) -> Device {
    match cuda {
        None => Device::libtorch(),
        Some(index) => Device::libtorch_cuda(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("flex".parse(), Ok(DeviceSpec::Flex));
        assert_eq!("tch-cpu".parse(), Ok(DeviceSpec::TchCpu));
        assert_eq!("tch-cuda:1".parse(), Ok(DeviceSpec::TchCuda(1)));
        assert!("tch-cuda:x".parse::<DeviceSpec>().is_err());
        assert!(
            "gpu"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .contains("unknown device")
        );
    }
}
