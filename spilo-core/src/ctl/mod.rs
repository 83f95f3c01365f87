//! spiloctl.
