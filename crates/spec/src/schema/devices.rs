//! Interfaces, port forwarding and passthrough devices (inventory §1.6, §1.7).

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceSpec {
    #[serde(rename = "type")]
    pub kind: Option<InterfaceType>,
    pub id: Option<String>,
    pub mac: Option<String>,
    #[serde(default)]
    pub macvtap: MacvtapSpec,
    pub bridge: Option<String>,
    #[serde(default)]
    pub tap: TapSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceType {
    User,
    Tap,
    Macvtap,
    Bridge,
}

impl InterfaceType {
    pub fn name(self) -> &'static str {
        match self {
            InterfaceType::User => "user",
            InterfaceType::Tap => "tap",
            InterfaceType::Macvtap => "macvtap",
            InterfaceType::Bridge => "bridge",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MacvtapSpec {
    pub link: Option<String>,
    pub mode: Option<MacvtapMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvtapMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
    Source,
}

impl MacvtapMode {
    pub fn name(self) -> &'static str {
        match self {
            MacvtapMode::Private => "private",
            MacvtapMode::Vepa => "vepa",
            MacvtapMode::Bridge => "bridge",
            MacvtapMode::Passthru => "passthru",
            MacvtapMode::Source => "source",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapSpec {
    pub vhost: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardPortSpec {
    pub from: Option<ForwardFrom>,
    pub proto: Option<ForwardProto>,
    #[serde(default)]
    pub host: ForwardEndpoint,
    #[serde(default)]
    pub guest: ForwardEndpoint,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardEndpoint {
    pub address: Option<String>,
    pub port: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardFrom {
    Host,
    Guest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardProto {
    Tcp,
    Udp,
}

impl ForwardProto {
    pub fn name(self) -> &'static str {
        match self {
            ForwardProto::Tcp => "tcp",
            ForwardProto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    pub bus: Option<DeviceBus>,
    pub path: Option<String>,
    #[serde(default)]
    pub qemu: DeviceQemuSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceBus {
    Pci,
    Usb,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceQemuSpec {
    pub device_extra_args: Option<String>,
    pub id: Option<String>,
    pub bus: Option<String>,
}
