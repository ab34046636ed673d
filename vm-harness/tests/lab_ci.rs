//! README's "Use the lab in your CI" script, run as written: `vm-harness up`
//! installs two nodes from an image directory, `vm-harness ssh` runs a command
//! on each, the script's trap tears the lab down.

mod e2e_support;

use std::process::Command;

use e2e_support::fixture;

/// The script between README's `lab-ci-script` markers.
fn readme_script() -> String {
    let readme = std::fs::read_to_string(vm_harness::e2e::workspace().join("README.md"))
        .expect("reading README.md");
    let block = readme
        .split("<!-- lab-ci-script -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /lab-ci-script -->").next())
        .expect("README.md holds the lab-ci-script markers");
    let body = block
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh code block between the markers");
    body.to_string()
}

#[test]
fn the_readme_ci_script_installs_two_nodes_runs_a_command_on_each_and_tears_down() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let script = readme_script();
    assert!(script.contains("vm-harness") && script.contains(" up "));
    // The image directory: the Debian tree the e2e fixture builds once.
    let image_dir = a
        .debian_image()
        .expect("the Debian image")
        .join("published/root");
    assert!(
        image_dir.join("usr/sbin/sshd").exists(),
        "{} has no sshd",
        image_dir.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&a.workspace)
        .env("IMAGE_DIR", &image_dir)
        .env("VM_HARNESS", env!("CARGO_BIN_EXE_vm-harness"))
        .env("ROLLOUT_BIN", &a.rollout)
        .output()
        .expect("running the README's script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let keeper_log = std::fs::read_to_string(std::env::temp_dir().join("vm-harness-myci.log"))
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "the script failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nkeeper log:\n{keeper_log}",
        out.status
    );
    for node in ["node1", "node2"] {
        assert!(
            stdout.contains(&format!("{node} runs serial ")),
            "no answer from {node}:\n{stdout}\n{stderr}"
        );
    }
    // The trap's `down` removed the lab's namespace.
    let namespaces = vm_harness::netns::list_lab_namespaces();
    assert!(
        !namespaces.iter().any(|n| n.ends_with("-myci")),
        "the lab is still there: {namespaces:?}"
    );
    let lab: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("/tmp/myci-lab.json").expect("the script's lab.json"),
    )
    .expect("up --json printed JSON");
    assert_eq!(lab["phase"], "ready");
    assert_eq!(lab["nodes"].as_array().map(Vec::len), Some(2));
    assert!(lab["nodes"][0]["ssh"]
        .as_str()
        .is_some_and(|s| s.contains("ssh") && s.contains("root@10.44.0.11")));
}
