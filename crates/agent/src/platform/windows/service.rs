//! The agent as a Windows service. `install` registers `agent.exe service run` (the supervisor,
//! as `agent run` is elsewhere) to start with Windows, as LocalSystem, restarted by the service
//! control manager when it fails; `run` is what the service control manager starts: it reports
//! the service's state and turns the stop control into the supervisor's shutdown.

use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept, ServiceErrorControl,
    ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState,
    ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::super::service_error::ServiceError;

const WAIT: Duration = Duration::from_secs(30);
/// `ERROR_SERVICE_EXISTS`.
const SERVICE_EXISTS: i32 = 1073;
/// `ERROR_INVALID_LEVEL`: a configuration this service manager does not know.
const INVALID_LEVEL: i32 = 124;
/// Restarts after a failure: at once, then after 5 s, then every 30 s; the count resets after a
/// day without failures.
const RESTARTS: [u64; 3] = [1, 5, 30];

type Body = Box<dyn FnOnce(CancellationToken) -> i32 + Send>;

/// The service the dispatcher is about to run: set by [`run`], taken by [`service_main`].
static PENDING: Mutex<Option<(String, Body)>> = Mutex::new(None);

fn manager_error<'a>(action: &'static str, name: &'a str) -> impl FnOnce(windows_service::Error) -> ServiceError + 'a {
    move |e| ServiceError::Manager { action, name: name.to_string(), source: Box::new(e) }
}

fn manager(access: ServiceManagerAccess, name: &str) -> Result<ServiceManager, ServiceError> {
    ServiceManager::local_computer(None::<&str>, access).map_err(manager_error("reach the service manager for", name))
}

/// Whether this system has a service manager `agent service` drives: the service control manager.
pub fn available() -> Result<(), ServiceError> {
    Ok(())
}

/// Registers the service `name`: `binary service run --name <name> --config <config>`, started
/// with Windows and restarted on failure (also when it exits with an error code).
pub fn install(name: &str, binary: &Path, config: &Path) -> Result<String, ServiceError> {
    let scm = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE, name)?;
    let args: Vec<OsString> =
        vec!["service".into(), "run".into(), "--name".into(), name.into(), "--config".into(), config.into()];
    let info = ServiceInfo {
        name: name.into(),
        display_name: format!("edge-agent ({name})").into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: binary.to_path_buf(),
        launch_arguments: args,
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_STATUS;
    let (service, verb) = match scm.create_service(&info, access) {
        Ok(s) => (s, "installed"),
        // Installed before (an upgrade by the installer): the same service, configured afresh.
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(SERVICE_EXISTS) => {
            let s = scm.open_service(name, access).map_err(manager_error("open", name))?;
            s.change_config(&info).map_err(manager_error("reconfigure", name))?;
            (s, "updated")
        }
        Err(e) => return Err(manager_error("create", name)(e)),
    };
    service
        .set_description("Self-upgrading agent (Medplum agent protocol): keeps a connection to its control server")
        .map_err(manager_error("describe", name))?;
    let actions = RESTARTS
        .iter()
        .map(|s| ServiceAction { action_type: ServiceActionType::Restart, delay: Duration::from_secs(*s) })
        .collect();
    let failure = ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
        reboot_msg: None,
        command: None,
        actions: Some(actions),
    };
    service.update_failure_actions(failure).map_err(manager_error("set the restart actions of", name))?;
    let mut said = String::new();
    match service.set_failure_actions_on_non_crash_failures(true) {
        Ok(()) => {}
        // Windows has had this since Vista; Wine's service manager does not take it.
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(INVALID_LEVEL) => {
            said +=
                "note: this service manager restarts the service when it crashes, not when it exits with an error\n";
        }
        Err(e) => return Err(manager_error("set the restart on error exits of", name)(e)),
    }
    Ok(said
        + &format!(
            "{verb} the service {name}: {} service run --config {} (starts with Windows, restarts on failure)\n",
            binary.display(),
            config.display()
        ))
}

/// Stops the service if it runs, and removes it.
pub fn uninstall(name: &str) -> Result<String, ServiceError> {
    let scm = manager(ServiceManagerAccess::CONNECT, name)?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
    let service = scm.open_service(name, access).map_err(manager_error("open", name))?;
    let mut said = String::new();
    if service.query_status().map_err(manager_error("query", name))?.current_state != ServiceState::Stopped {
        said += &stop(name)?;
    }
    service.delete().map_err(manager_error("remove", name))?;
    Ok(said + &format!("removed the service {name}\n"))
}

/// Starts the service and waits until it runs. `log` is named if it stops instead.
pub fn start(name: &str, log: &Path) -> Result<String, ServiceError> {
    let scm = manager(ServiceManagerAccess::CONNECT, name)?;
    let service = scm
        .open_service(name, ServiceAccess::START | ServiceAccess::QUERY_STATUS)
        .map_err(manager_error("open", name))?;
    service.start::<OsString>(&[]).map_err(manager_error("start", name))?;
    let status = wait_for(name, &service, ServiceState::Running, "running")?;
    if status.current_state == ServiceState::Stopped {
        let code = match status.exit_code {
            ServiceExitCode::Win32(c) | ServiceExitCode::ServiceSpecific(c) => c,
        };
        return Err(ServiceError::Failed { name: name.into(), code, log: log.display().to_string() });
    }
    Ok(format!("started the service {name}\n"))
}

/// Asks the service to stop and waits until it has.
pub fn stop(name: &str) -> Result<String, ServiceError> {
    let scm = manager(ServiceManagerAccess::CONNECT, name)?;
    let service = scm
        .open_service(name, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)
        .map_err(manager_error("open", name))?;
    if service.query_status().map_err(manager_error("query", name))?.current_state == ServiceState::Stopped {
        return Ok(format!("the service {name} is not running\n"));
    }
    service.stop().map_err(manager_error("stop", name))?;
    wait_for(name, &service, ServiceState::Stopped, "stopped")?;
    Ok(format!("stopped the service {name}\n"))
}

/// Polls the service's state until it is `wanted` (or stopped), for at most [`WAIT`].
fn wait_for(
    name: &str,
    service: &windows_service::service::Service,
    wanted: ServiceState,
    what: &'static str,
) -> Result<ServiceStatus, ServiceError> {
    let started = Instant::now();
    loop {
        let status = service.query_status().map_err(manager_error("query", name))?;
        if status.current_state == wanted || status.current_state == ServiceState::Stopped {
            return Ok(status);
        }
        if started.elapsed() > WAIT {
            let state = format!("{:?}", status.current_state);
            return Err(ServiceError::Timeout { name: name.into(), wanted: what, secs: WAIT.as_secs(), state });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs as the service `name`: hands this thread to the service control manager, which calls
/// back into [`service_main`]; `body` runs the supervisor until the token is cancelled and
/// returns the exit code. Returns when the service has stopped.
pub fn run(name: &str, body: Body) -> Result<(), ServiceError> {
    *PENDING.lock().unwrap() = Some((name.to_string(), body));
    service_dispatcher::start(name, entry::main()).map_err(manager_error("run as", name))
}

// The entry point the service control manager calls, generated by the crate; its one unsafe
// block parses the argument vector the system passes.
#[allow(unsafe_code)]
mod entry {
    windows_service::define_windows_service!(ffi_service_main, service_main_entry);

    fn service_main_entry(args: Vec<std::ffi::OsString>) {
        super::service_main(args)
    }
    /// The generated entry point, for [`service_dispatcher::start`].
    pub(super) fn main() -> extern "system" fn(u32, *mut *mut u16) {
        ffi_service_main
    }
}

fn service_main(_args: Vec<OsString>) {
    let Some((name, body)) = PENDING.lock().unwrap().take() else { return };
    let shutdown = CancellationToken::new();
    let registered: Arc<OnceLock<ServiceStatusHandle>> = Arc::default();
    let handler = {
        let (stopping, registered) = (shutdown.clone(), registered.clone());
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                // The supervisor stops its worker (up to 10 s) before it returns.
                if let Some(h) = registered.get() {
                    report(*h, ServiceState::StopPending, 0);
                }
                stopping.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let handle = match service_control_handler::register(&name, handler) {
        Ok(h) => *registered.get_or_init(|| h),
        Err(e) => return tracing::error!("cannot register with the service control manager: {e}"),
    };
    report(handle, ServiceState::Running, 0);
    let code = body(shutdown);
    report(handle, ServiceState::Stopped, code.max(0) as u32);
}

/// Tells the service control manager the service's state (a non-zero `code` is a failure, which
/// its restart actions answer).
fn report(handle: ServiceStatusHandle, state: ServiceState, code: u32) {
    let accepted = match state {
        ServiceState::Running => ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        _ => ServiceControlAccept::empty(),
    };
    let exit_code = if code == 0 { ServiceExitCode::Win32(0) } else { ServiceExitCode::ServiceSpecific(code) };
    let status = ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accepted,
        exit_code,
        checkpoint: 0,
        wait_hint: if state == ServiceState::StopPending { Duration::from_secs(15) } else { Duration::ZERO },
        process_id: None,
    };
    if let Err(e) = handle.set_service_status(status) {
        tracing::warn!("cannot report the service's state ({state:?}): {e}");
    }
}
