//! quizflow's delivery side (SPEC §3).
//!
//! So far: the bundled [`mock`] provider (SPEC §3.1) that speaks the Twilio Messages,
//! WhatsApp Cloud, Evolution `sendText`, Resend `/emails` and webhook request shapes, records
//! what it receives and injects faults. The channel worker pools come next.

pub mod mock;
