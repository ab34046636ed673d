//! The configuration of OpenIPMI's `ipmi_sim` (a BMC on RMCP+) as the power
//! tests and the lab run it: one management controller, one admin user, and
//! a `chassis_control` program that holds the chassis' power and boot device.

/// What one simulated BMC answers with.
pub struct SimBmc<'a> {
    /// Where its LAN interface listens (`addr`, `port`).
    pub lan: (&'a str, u16),
    /// Where it listens for a QEMU `ipmi-bmc-extern` device (`serial … codec VM`).
    pub vm: Option<(&'a str, u16)>,
    /// The `chassis_control` command line.
    pub chassis_program: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

impl SimBmc<'_> {
    /// `ipmi_sim -c` text.
    pub fn lan_conf(&self) -> String {
        let vm = self
            .vm
            .map(|(addr, port)| format!("  serial 15 {addr} {port} codec VM\n"))
            .unwrap_or_default();
        format!(
            r#"name "rollout"
set_working_mc 0x20
  startlan 1
    addr {} {}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
{vm}  chassis_control "{}"
  user 2 true "{}" "{}" admin 10 none md2 md5 straight
"#,
            self.lan.0, self.lan.1, self.chassis_program, self.user, self.password
        )
    }
}

/// `ipmi_sim -f` text: the emulated management controller.
pub const SIM_EMU: &str =
    "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_conf_has_the_lan_the_vm_port_and_the_chassis_program() {
        let c = SimBmc {
            lan: ("127.0.0.1", 6231),
            vm: Some(("127.0.0.1", 9101)),
            chassis_program: "/lab/chassis.sh /lab/state",
            user: "admin",
            password: "pw",
        }
        .lan_conf();
        assert!(c.contains("    addr 127.0.0.1 6231\n"), "{c}");
        assert!(c.contains("  serial 15 127.0.0.1 9101 codec VM\n"), "{c}");
        assert!(
            c.contains("  chassis_control \"/lab/chassis.sh /lab/state\"\n"),
            "{c}"
        );
        assert!(c.contains("  user 2 true \"admin\" \"pw\" admin"), "{c}");
    }
}
