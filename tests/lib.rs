//! End-to-end tests live beside this file; each starts the crew's binaries as processes.
