//! Panics in the installer. As PID 1 a panic must not end the process (the
//! kernel would panic) nor reboot silently (the server would wait for its
//! timeout): the hook records what panicked and where, and `steps::Run::guarded`
//! turns the unwound panic into a failed step reported like any other failure.
//! This needs `panic = "unwind"`, Rust's default, which the release profile
//! keeps (see the workspace Cargo.toml).

use std::any::Any;
use std::cell::RefCell;
use std::panic::PanicHookInfo;
use std::sync::Once;

thread_local! {
    /// The last panic on this thread, as "message at file:line:col". Per thread
    /// because the hook runs on the panicking thread, where it is caught.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// "message at file:line:col".
pub fn describe(info: &PanicHookInfo) -> String {
    let msg = payload_text(info.payload());
    match info.location() {
        Some(l) => format!("{msg} at {}:{}:{}", l.file(), l.line(), l.column()),
        None => msg,
    }
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".into()
    }
}

/// Installs the hook once per process: it prints `internal error: …` on the
/// console (so the line is in the failure report's console tail) and records the
/// panic for [`take`]. Unit tests keep the default hook's output as well.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            crate::console::line(&format!("internal error: {info}"));
            LAST.with(|l| *l.borrow_mut() = Some(describe(info)));
            if cfg!(test) {
                previous(info);
            }
        }));
    });
}

/// What the caught panic was: the hook's record if it ran on this thread, else
/// the payload's text (no location).
pub fn take(payload: Box<dyn Any + Send>) -> String {
    LAST.with(|l| l.borrow_mut().take())
        .unwrap_or_else(|| payload_text(payload.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_records_message_and_location() {
        install_hook();
        let payload = std::panic::catch_unwind(|| panic!("disk vanished: {}", 7)).unwrap_err();
        let what = take(payload);
        assert!(what.starts_with("disk vanished: 7 at "), "{what}");
        assert!(what.contains("crash.rs:"), "{what}");
        assert!(crate::console::tail()
            .iter()
            .any(|l| l.contains("internal error: ") && l.contains("disk vanished: 7")));
    }

    #[test]
    fn without_a_record_the_payload_is_used() {
        let payload: Box<dyn Any + Send> = Box::new(String::from("plain"));
        assert_eq!(take(payload), "plain");
    }
}
