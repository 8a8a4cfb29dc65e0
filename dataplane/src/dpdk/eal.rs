//! EAL start-up, worker lcores and launching work on them.
use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum EalError {
    #[error("the EAL is already initialised in this process (it can be started only once)")]
    AlreadyInitialised,
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    #[error("EAL initialisation failed ({reason}); arguments were: {args}")]
    Init { reason: String, args: String },
    #[error("lcore {lcore} is not a worker lcore of this EAL (workers: {workers:?})")]
    NotAWorker { lcore: u32, workers: Vec<u32> },
    #[error("cannot launch work on lcore {lcore}: {reason}")]
    Launch { lcore: u32, reason: String },
}

static STARTED: AtomicBool = AtomicBool::new(false);
/// True between a successful init and the cleanup: pools and ports are made only then.
static UP: AtomicBool = AtomicBool::new(false);

/// Is the EAL initialised (and not yet cleaned up)?
pub fn is_up() -> bool {
    UP.load(Ordering::SeqCst)
}

/// A started EAL. Dropping it runs `rte_eal_cleanup`.
pub struct Eal {
    main_lcore: u32,
    workers: Vec<u32>,
}

type Job = Box<dyn FnOnce() -> i32 + Send + 'static>;

unsafe extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Box<Job> leaked by Eal::launch for exactly this one call.
    let job = unsafe { Box::from_raw(arg.cast::<Job>()) };
    // A panic must not unwind into C: report it as a failed job.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or(-1)
}

impl Eal {
    /// Starts the EAL with `args` (without the program name). The first lcore of the
    /// list becomes the main lcore (the control thread); the others are workers.
    pub fn init(args: &[String]) -> Result<Eal, EalError> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(EalError::AlreadyInitialised);
        }
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("podpath-dataplane").expect("no NUL"));
        for a in args {
            owned.push(CString::new(a.as_str()).map_err(|_| EalError::BadArgument(a.clone()))?);
        }
        // EAL may keep pointers into argv for the life of the process: leak it (once).
        let owned: &'static mut [CString] = Box::leak(owned.into_boxed_slice());
        let argv: &'static mut [*mut std::ffi::c_char] = Box::leak(
            owned
                .iter()
                .map(|s| s.as_ptr().cast_mut())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let argc = c_int::try_from(argv.len()).expect("few arguments");
        // SAFETY: argv holds argc valid NUL-terminated strings that live forever; EAL is
        // initialised at most once per process (STARTED above).
        let rc = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            let errno = super::last_errno();
            return Err(EalError::Init {
                reason: super::strerror(errno),
                args: args.join(" "),
            });
        }
        // SAFETY: plain queries of the EAL's lcore configuration after a successful init.
        let main_lcore = unsafe { dpdk_sys::rte_get_main_lcore() };
        let mut workers = Vec::new();
        let mut i = u32::MAX;
        loop {
            // SAFETY: as above; iterating from u32::MAX (-1) starts at the first lcore.
            i = unsafe { dpdk_sys::rte_get_next_lcore(i, 1, 0) };
            if i >= dpdk_sys::RTE_MAX_LCORE {
                break;
            }
            workers.push(i);
        }
        UP.store(true, Ordering::SeqCst);
        Ok(Eal {
            main_lcore,
            workers,
        })
    }

    pub fn main_lcore(&self) -> u32 {
        self.main_lcore
    }

    /// Worker lcores, in order (the main lcore excluded).
    pub fn worker_lcores(&self) -> &[u32] {
        &self.workers
    }

    /// TSC ticks per second, as EAL calibrated them.
    pub fn tsc_hz(&self) -> u64 {
        // SAFETY: reads a value set during EAL init.
        unsafe { dpdk_sys::pp_tsc_hz() }
    }

    /// Runs `job` on worker `lcore` (pinned there by EAL); collect its return value with
    /// [`Eal::wait`].
    pub fn launch(
        &self,
        lcore: u32,
        job: impl FnOnce() -> i32 + Send + 'static,
    ) -> Result<(), EalError> {
        if !self.workers.contains(&lcore) {
            return Err(EalError::NotAWorker {
                lcore,
                workers: self.workers.clone(),
            });
        }
        let boxed: Box<Job> = Box::new(Box::new(job));
        let arg = Box::into_raw(boxed).cast::<c_void>();
        // SAFETY: lcore is a worker of this EAL; trampoline takes back ownership of arg
        // exactly once when the lcore runs it.
        let rc = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if rc != 0 {
            // SAFETY: the launch failed, so trampoline never ran: the Box is still ours.
            drop(unsafe { Box::from_raw(arg.cast::<Job>()) });
            return Err(EalError::Launch {
                lcore,
                reason: super::strerror(-rc),
            });
        }
        Ok(())
    }

    /// Waits for the job on `lcore` to finish and returns its value.
    pub fn wait(&self, lcore: u32) -> i32 {
        // SAFETY: waiting on an lcore of this EAL has no other precondition.
        unsafe { dpdk_sys::rte_eal_wait_lcore(lcore) }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        for &l in &self.workers {
            self.wait(l);
        }
        UP.store(false, Ordering::SeqCst);
        // SAFETY: every worker has returned and ports are closed (the dataplane drops
        // its control state first); no new pool or port can be made (UP is false).
        unsafe {
            dpdk_sys::rte_eal_cleanup();
        }
    }
}
