//! A component's copy-on-write memory images, made at load.
//!
//! Why at load, and why a busy seal is tried again: see
//! [`prepare_memory_images`].

use std::time::Duration;

use wasmtime::component::Component;

/// How often a busy memory image is tried again, and the first pause.
const IMAGE_TRIES: u32 = 6;
const IMAGE_PAUSE: Duration = Duration::from_millis(5);

/// Make the component's copy-on-write memory images now, at load, rather
/// than at its first instantiation.
///
/// On Linux wasmtime writes each image to a memfd and seals it. The kernel
/// refuses the write seal with `EBUSY` while any of the file's fresh pages
/// still holds an extra reference, which pages waiting in another CPU's LRU
/// batch can do for a moment on a busy machine (seen once in CI: a Python
/// step's `describe` "trapped: Device or resource busy"). Nothing is wrong
/// with the component, and wasmtime keeps no failed image, so a busy seal is
/// tried again after a short pause (doubling), a few times.
pub(super) fn prepare_memory_images(component: &Component) -> wasmtime::Result<()> {
    retry_busy(IMAGE_TRIES, IMAGE_PAUSE, || {
        component.initialize_copy_on_write_image()
    })
}

/// Call `f` until it succeeds, fails otherwise than with `EBUSY`, or has
/// been tried `tries` times; pause `pause` (doubling) between tries.
fn retry_busy<T>(
    tries: u32,
    mut pause: Duration,
    mut f: impl FnMut() -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let mut tried = 1;
    loop {
        match f() {
            Err(e) if tried < tries && is_busy(&e) => {
                tracing::debug!("memory image busy ({e:#}); trying again in {pause:?}");
                std::thread::sleep(pause);
                pause *= 2;
                tried += 1;
            }
            r => return r,
        }
    }
}

fn is_busy(e: &wasmtime::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ResourceBusy)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> wasmtime::Error {
        wasmtime::Error::new(std::io::Error::from_raw_os_error(16)).context("cannot add seals")
    }

    #[test]
    fn a_busy_image_is_tried_again_and_other_errors_are_not() {
        let mut calls = 0;
        let r = retry_busy(6, Duration::ZERO, || {
            calls += 1;
            if calls < 3 { Err(busy()) } else { Ok(calls) }
        });
        assert_eq!(r.unwrap(), 3);

        let mut calls = 0;
        let r: wasmtime::Result<()> = retry_busy(6, Duration::ZERO, || {
            calls += 1;
            Err(wasmtime::Error::msg("not busy"))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1, "an error other than EBUSY is final");

        let mut calls = 0;
        let r: wasmtime::Result<()> = retry_busy(4, Duration::ZERO, || {
            calls += 1;
            Err(busy())
        });
        assert!(is_busy(&r.unwrap_err()));
        assert_eq!(calls, 4, "a seal busy every time gives up after the tries");
    }
}
