//! Which first stage a PXE client gets. Pure: the inputs are what the client said
//! about itself (RFC 4578 option 93, option 77, option 60) and the server's URLs.

use dhcproto::v4::{DhcpOption, Message, OptionCode};

/// RFC 4578 / IANA processor architecture types we act on.
pub mod arch {
    pub const BIOS: u16 = 0;
    pub const EFI_IA32: u16 = 6;
    pub const EFI_X64: u16 = 7;
    pub const EFI_BC: u16 = 9;
    pub const EFI_ARM64: u16 = 11;
    pub const EFI_X64_HTTP: u16 = 16;
}

/// What a client said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientClass {
    /// Option 93, absent on plain DHCP clients (an OS renewing its lease).
    pub arch: Option<u16>,
    /// Option 77 says "iPXE": the first stage is already running.
    pub ipxe: bool,
    /// Option 60 starts with "HTTPClient": UEFI HTTP boot, which fetches a URL itself.
    pub http_client: bool,
    /// Option 60 starts with "PXEClient" (or HTTPClient): a network-boot firmware.
    pub pxe: bool,
}

impl ClientClass {
    pub fn of(msg: &Message) -> ClientClass {
        let opts = msg.opts();
        let vendor = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => v.as_slice(),
            _ => &[],
        };
        let ipxe = match opts.get(OptionCode::UserClass) {
            // RFC 3004 user class is length-prefixed, but iPXE sends the bare
            // string "iPXE"; accept both.
            Some(DhcpOption::UserClass(v)) => {
                v.as_slice() == b"iPXE" || v.get(1..).is_some_and(|rest| rest.starts_with(b"iPXE"))
            }
            _ => false,
        };
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
            _ => None,
        };
        let http_client = vendor.starts_with(b"HTTPClient");
        ClientClass {
            arch,
            ipxe,
            http_client,
            pxe: http_client || vendor.starts_with(b"PXEClient"),
        }
    }

    pub fn arch_name(&self) -> &'static str {
        match self.arch {
            None => "none",
            Some(arch::BIOS) => "bios",
            Some(arch::EFI_IA32) => "efi-ia32",
            Some(arch::EFI_X64) | Some(arch::EFI_BC) => "efi-x64",
            Some(arch::EFI_ARM64) => "efi-arm64",
            Some(arch::EFI_X64_HTTP) => "efi-x64-http",
            Some(_) => "other",
        }
    }
}

/// What to put in the boot fields of the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOffer {
    /// Not a network-boot client, or nothing we can boot: an address only.
    None { reason: &'static str },
    /// A first-stage loader fetched by TFTP from `siaddr`.
    Tftp { file: String },
    /// A URL the client fetches itself (iPXE script, or an EFI binary for HTTP boot).
    Http { url: String },
}

impl BootOffer {
    pub fn describe(&self) -> String {
        match self {
            BootOffer::None { reason } => format!("no boot file ({reason})"),
            BootOffer::Tftp { file } => format!("tftp {file}"),
            BootOffer::Http { url } => format!("http {url}"),
        }
    }
}

/// Names of the loaders in the TFTP root and the server's URLs.
#[derive(Debug, Clone)]
pub struct BootTargets {
    pub bios_loader: String,
    pub uefi_loader: String,
    /// Base of the HTTP server, e.g. `http://10.44.0.1`.
    pub http_base: String,
}

impl BootTargets {
    pub fn new(http_base: &str) -> BootTargets {
        BootTargets {
            bios_loader: "undionly.kpxe".into(),
            // snponly drives the NIC through the firmware's own driver, which works on
            // more real hardware than ipxe.efi's built-in drivers.
            uefi_loader: "snponly.efi".into(),
            http_base: http_base.trim_end_matches('/').to_string(),
        }
    }

    pub fn script_url(&self) -> String {
        format!("{}/boot.ipxe", self.http_base)
    }
}

/// The decision for a network-boot client. The MAC being known or not does not
/// change the first stage: unknown machines get the default image's installer,
/// and the iPXE script (not DHCP) is where per-node policy applies.
pub fn boot_offer(class: &ClientClass, targets: &BootTargets) -> BootOffer {
    if !class.pxe && !class.ipxe {
        return BootOffer::None {
            reason: "not a network-boot client",
        };
    }
    if class.ipxe {
        // Already running iPXE: hand it the script, or it would chainload itself forever.
        return BootOffer::Http {
            url: targets.script_url(),
        };
    }
    // The same loader as over TFTP: snponly.efi drives the NIC through the
    // firmware's own driver. ipxe.efi (its own drivers) did boot, but after an
    // installed node's `exit 1` it hung in OVMF instead of handing back to the
    // firmware, so the node never reached its disk (UEFI e2e, HTTP boot).
    let http_efi = || BootOffer::Http {
        url: format!("{}/ipxe/{}", targets.http_base, targets.uefi_loader),
    };
    if class.http_client {
        // UEFI HTTP boot runs an EFI binary straight from a URL; iPXE then takes over.
        return match class.arch {
            Some(arch::EFI_X64_HTTP) | Some(arch::EFI_X64) | Some(arch::EFI_BC) => http_efi(),
            _ => BootOffer::None {
                reason: "HTTP boot is only offered to x86-64 UEFI",
            },
        };
    }
    match class.arch {
        None | Some(arch::BIOS) => BootOffer::Tftp {
            file: targets.bios_loader.clone(),
        },
        Some(arch::EFI_X64) | Some(arch::EFI_BC) => BootOffer::Tftp {
            file: targets.uefi_loader.clone(),
        },
        Some(arch::EFI_X64_HTTP) => http_efi(),
        Some(arch::EFI_IA32) => BootOffer::None {
            reason: "32-bit UEFI: no ia32 iPXE loader is installed",
        },
        Some(arch::EFI_ARM64) => BootOffer::None {
            reason: "arm64 UEFI: no arm64 iPXE loader is installed",
        },
        Some(_) => BootOffer::None {
            reason: "unsupported client architecture",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> BootTargets {
        BootTargets::new("http://10.44.0.1")
    }

    fn class(arch: u16, ipxe: bool, http_client: bool) -> ClientClass {
        ClientClass {
            arch: Some(arch),
            ipxe,
            http_client,
            pxe: true,
        }
    }

    /// Every combination the issue names: arch 0/6/7/9/11 × iPXE or not × HTTPClient or not.
    #[test]
    fn first_stage_for_every_arch_ipxe_httpclient_combination() {
        let script = BootOffer::Http {
            url: "http://10.44.0.1/boot.ipxe".into(),
        };
        let http_efi = BootOffer::Http {
            url: "http://10.44.0.1/ipxe/snponly.efi".into(),
        };
        let tftp = |f: &str| BootOffer::Tftp { file: f.into() };
        let cases: &[(u16, bool, bool, BootOffer)] = &[
            (0, false, false, tftp("undionly.kpxe")),
            (0, true, false, script.clone()),
            (
                0,
                false,
                true,
                BootOffer::None {
                    reason: "HTTP boot is only offered to x86-64 UEFI",
                },
            ),
            (0, true, true, script.clone()),
            (
                6,
                false,
                false,
                BootOffer::None {
                    reason: "32-bit UEFI: no ia32 iPXE loader is installed",
                },
            ),
            (6, true, false, script.clone()),
            (
                6,
                false,
                true,
                BootOffer::None {
                    reason: "HTTP boot is only offered to x86-64 UEFI",
                },
            ),
            (6, true, true, script.clone()),
            (7, false, false, tftp("snponly.efi")),
            (7, true, false, script.clone()),
            (7, false, true, http_efi.clone()),
            (7, true, true, script.clone()),
            (9, false, false, tftp("snponly.efi")),
            (9, true, false, script.clone()),
            (9, false, true, http_efi.clone()),
            (9, true, true, script.clone()),
            (
                11,
                false,
                false,
                BootOffer::None {
                    reason: "arm64 UEFI: no arm64 iPXE loader is installed",
                },
            ),
            (11, true, false, script.clone()),
            (
                11,
                false,
                true,
                BootOffer::None {
                    reason: "HTTP boot is only offered to x86-64 UEFI",
                },
            ),
            (11, true, true, script.clone()),
            (16, false, true, http_efi.clone()),
        ];
        for (arch, ipxe, http, want) in cases {
            let got = boot_offer(&class(*arch, *ipxe, *http), &targets());
            assert_eq!(&got, want, "arch={arch} ipxe={ipxe} httpclient={http}");
        }
    }

    #[test]
    fn plain_dhcp_clients_get_no_boot_file() {
        let c = ClientClass::default();
        assert!(matches!(boot_offer(&c, &targets()), BootOffer::None { .. }));
    }
}
