//! `--plan`: from the CPU each role spent per lead in a measured run, what a target rate
//! needs. Assumptions, stated in the output: cost per lead stays flat with scale (true of the
//! stateless roles; the database writer and a single NATS stream leader do not scale out by
//! adding instances), and every process is planned at `utilization` of its cores.

use serde::Serialize;

/// CPU one role spent per accepted lead.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RoleCost {
    pub role: String,
    pub cpu_s_per_lead: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanLine {
    pub role: String,
    pub cores: f64,
    pub instances: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub leads_per_s: f64,
    pub utilization: f64,
    pub cores_per_instance: f64,
    pub lines: Vec<PlanLine>,
    pub total_cores: f64,
}

/// Leads per second from `100000/min`, `1667/s` or `1667`.
pub fn parse_rate(raw: &str) -> Result<f64, String> {
    let raw = raw.trim().replace('_', "");
    let (n, per) = match raw.split_once('/') {
        Some((n, "s" | "sec")) => (n.to_owned(), 1.0),
        Some((n, "min" | "m")) => (n.to_owned(), 60.0),
        Some((n, "h")) => (n.to_owned(), 3600.0),
        Some(_) => return Err(format!("{raw:?}: give N/s, N/min or N/h")),
        None => (raw.clone(), 1.0),
    };
    match n.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v / per),
        _ => Err(format!("{raw:?} is not a positive rate")),
    }
}

/// The cores and instances per role for `leads_per_s`.
pub fn plan(
    costs: &[RoleCost],
    leads_per_s: f64,
    utilization: f64,
    cores_per_instance: f64,
) -> Plan {
    let utilization = utilization.clamp(0.05, 1.0);
    let per_instance = cores_per_instance.max(0.1);
    let lines: Vec<PlanLine> = costs
        .iter()
        .map(|c| {
            let cores = c.cpu_s_per_lead * leads_per_s / utilization;
            PlanLine {
                role: c.role.clone(),
                cores,
                instances: ((cores / per_instance).ceil() as u32).max(1),
            }
        })
        .collect();
    Plan {
        leads_per_s,
        utilization,
        cores_per_instance: per_instance,
        total_cores: lines.iter().map(|l| l.cores).sum(),
        lines,
    }
}

impl Plan {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## Plan for {:.0} leads/s ({:.0}/min)\n\nAssumes: CPU per lead as measured stays flat with scale; every process at {:.0} % of its cores; {} cores per instance.\n\n| role | cores | instances |\n|---|---|---|\n",
            self.leads_per_s,
            self.leads_per_s * 60.0,
            self.utilization * 100.0,
            self.cores_per_instance
        );
        for l in &self.lines {
            out.push_str(&format!(
                "| {} | {:.1} | {} |\n",
                l.role, l.cores, l.instances
            ));
        }
        out.push_str(&format!("| **total** | **{:.1}** | |\n", self.total_cores));
        out.push_str(
            "\nnats-server and PostgreSQL lines are cores for the whole cluster or server: the stream \
             leader and the database writer do not spread by adding instances (see README, Capacity).\n",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_per_second_per_minute_or_bare() {
        assert_eq!(parse_rate("1667/s"), Ok(1667.0));
        assert_eq!(parse_rate("100000/min"), Ok(100_000.0 / 60.0));
        assert_eq!(parse_rate("1_000_000/min"), Ok(1_000_000.0 / 60.0));
        assert_eq!(parse_rate("36000/h"), Ok(10.0));
        assert_eq!(parse_rate("500"), Ok(500.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10/week").is_err());
    }

    #[test]
    fn cores_are_cost_times_rate_over_utilization_and_instances_round_up() {
        let costs = vec![
            RoleCost {
                role: "api".into(),
                cpu_s_per_lead: 0.000_2,
            },
            RoleCost {
                role: "workers".into(),
                cpu_s_per_lead: 0.000_05,
            },
        ];
        let p = plan(&costs, 10_000.0, 0.5, 2.0);
        // api: 0.0002 s × 10,000/s = 2 cores busy; at 50 % → 4 cores → 2 instances of 2.
        assert!((p.lines[0].cores - 4.0).abs() < 1e-9);
        assert_eq!(p.lines[0].instances, 2);
        // workers: 0.5 busy → 1 core → 1 instance (never 0).
        assert!((p.lines[1].cores - 1.0).abs() < 1e-9);
        assert_eq!(p.lines[1].instances, 1);
        assert!((p.total_cores - 5.0).abs() < 1e-9);
        let tiny = plan(&costs, 0.001, 0.7, 2.0);
        assert!(tiny.lines.iter().all(|l| l.instances == 1));
    }
}
