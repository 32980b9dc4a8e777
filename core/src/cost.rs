//! Unit prices per channel (`QUIZFLOW_COST_<CHANNEL>`, `QUIZFLOW_COST_CURRENCY`): what a
//! message sent on each channel costs, for the cost figures in stats, metrics and dashboard.

use crate::Channel;
use serde::Serialize;

/// What one message accepted by a channel's provider costs. Zero when not configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Costs {
    pub currency: String,
    pub sms: f64,
    pub email: f64,
    pub whatsapp: f64,
    pub webhook: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            sms: 0.0,
            email: 0.0,
            whatsapp: 0.0,
            webhook: 0.0,
        }
    }
}

impl Costs {
    pub fn unit(&self, channel: Channel) -> f64 {
        match channel {
            Channel::Sms => self.sms,
            Channel::Email => self.email,
            Channel::Whatsapp => self.whatsapp,
            Channel::Webhook => self.webhook,
        }
    }
}
