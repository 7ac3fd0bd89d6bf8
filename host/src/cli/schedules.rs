//! `keyhole schedules …`: run functions periodically under `keyhole serve`.

use std::time::Duration;

use clap::Subcommand;

use super::output;
use crate::Keyhole;
use crate::schedules::{Cadence, ScheduleEdit};
use crate::storage::ScheduleRow;

/// `keyhole schedules` subcommands.
#[derive(Debug, Subcommand)]
pub enum SchedulesCmd {
    /// Run a function periodically while `keyhole serve` runs.
    ///
    /// Runs never overlap: a run still going when the next is due skips that slot. Runs
    /// missed while the host was down happen once at start, not once per missed slot.
    Add {
        /// Schedule name.
        name: String,
        /// Function to run.
        #[arg(long)]
        function: String,
        /// Interval, e.g. 30s, 5m, 1h (at least 1s, at most 366 days); or give --cron.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "cron")]
        every: Option<Duration>,
        /// Cron expression (UTC, seconds field first), e.g. "0 */5 * * * *"; or give --every.
        #[arg(long)]
        cron: Option<String>,
        /// Input JSON passed on every run.
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// Change a schedule's function, cadence or input; what is not given stays.
    ///
    /// A new cadence starts afresh, as for a new schedule: the next run is one interval
    /// (or the next cron time) from now. The change applies from the next run, also in a
    /// `keyhole serve` already running; a run going on finishes as it started. The
    /// schedule keeps its name, its state (paused or active) and its history.
    Edit {
        /// Schedule name.
        name: String,
        /// Run this function instead.
        #[arg(long)]
        function: Option<String>,
        /// New interval, e.g. 30s, 5m, 1h (at least 1s, at most 366 days).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "cron")]
        every: Option<Duration>,
        /// New cron expression (UTC, seconds field first), e.g. "0 */5 * * * *".
        #[arg(long)]
        cron: Option<String>,
        /// New input JSON, passed on every run.
        #[arg(long)]
        input: Option<String>,
    },
    /// List schedules.
    List,
    /// Show a schedule.
    Show {
        /// Schedule name.
        name: String,
    },
    /// Stop running a schedule until resumed.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Resume a paused schedule.
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Release the claim a run cut off by a crash left, so the schedule can run again.
    ///
    /// A run claims its schedule for the function's timeout and a minute; the claim goes
    /// when the run ends. A `keyhole serve` killed mid-run (SIGKILL, a power cut) leaves its
    /// claim behind, and `show` says "running" until it runs out. Release it when you know
    /// that run is gone: the schedule then runs at its next due slot (at once, if one is
    /// due). With no claim holding the schedule, nothing changes.
    ///
    /// A claim names the process that made it: while that process still runs on this
    /// machine, the release is refused (its run is going on, and ends by the claim's end).
    /// Releasing a claim whose run is in fact still going lets another server run the
    /// schedule beside it.
    Release {
        /// Schedule name.
        name: String,
        /// Release even though the process that claimed the schedule still runs (when
        /// its id now belongs to another program).
        #[arg(long)]
        force: bool,
    },
    /// Delete a schedule.
    Delete {
        /// Schedule name.
        name: String,
    },
}

fn cadence(row: &ScheduleRow) -> String {
    Cadence::of(row)
        .map(|c| c.describe())
        .unwrap_or_else(|e| e.to_string())
}

/// Whether a claimed run holds the schedule now, and until when.
fn running(row: &ScheduleRow) -> String {
    match row.running_until {
        Some(until) => format!(
            "yes, claimed until {}{} (a run cut off by a crash holds the schedule until then; \
             `keyhole schedules release {}` releases its claim)",
            output::time(Some(until)),
            row.claimed_by
                .map(|pid| format!(" by process {pid}"))
                .unwrap_or_default(),
            row.name
        ),
        None => "no".into(),
    }
}

fn print(row: &ScheduleRow) {
    output::fields(&[
        ("name", row.name.clone()),
        ("function", row.function.clone()),
        ("cadence", cadence(row)),
        ("input", row.input.clone()),
        (
            "state",
            if row.paused {
                "paused".into()
            } else {
                "active".into()
            },
        ),
        ("running", running(row)),
        (
            "next run",
            if row.paused {
                "-".into()
            } else {
                output::time(Some(row.next_run_at))
            },
        ),
        ("last run", output::time(row.last_run_at)),
        (
            "last outcome",
            row.last_outcome.clone().unwrap_or_else(|| "-".into()),
        ),
    ]);
}

/// The cadence `--every` or `--cron` gives, if either does (clap refuses both).
fn given_cadence(every: Option<Duration>, cron: Option<String>) -> anyhow::Result<Option<Cadence>> {
    Ok(match (every, cron) {
        (Some(d), _) => Some(Cadence::Every(d)),
        (None, Some(expr)) => Some(Cadence::cron(&expr)?),
        (None, None) => None,
    })
}

/// `keyhole schedules …`; `json`: print JSON.
pub fn schedules(host: &Keyhole, cmd: SchedulesCmd, json: bool) -> anyhow::Result<i32> {
    let s = host.schedules();
    match cmd {
        SchedulesCmd::Add {
            name,
            function,
            every,
            cron,
            input,
        } => {
            let cadence = given_cadence(every, cron)?.ok_or_else(|| {
                usage!(
                    "say when it runs: --every DURATION (e.g. 5m) or --cron EXPR (e.g. \"0 */5 * * * *\")"
                )
            })?;
            let row = s.add(&name, &function, &cadence, &input)?;
            if json {
                output::json(&row)?;
            } else {
                println!(
                    "added schedule {name}: {} runs {}",
                    row.function,
                    cadence.describe()
                );
                println!(
                    "first run at {} (schedules run while `keyhole serve` runs)",
                    output::time(Some(row.next_run_at))
                );
            }
        }
        SchedulesCmd::Edit {
            name,
            function,
            every,
            cron,
            input,
        } => {
            if function.is_none() && every.is_none() && cron.is_none() && input.is_none() {
                return Err(usage!(
                    "say what to change: --function F, --every DURATION, --cron EXPR or --input JSON"
                ));
            }
            let new_cadence = given_cadence(every, cron)?;
            let moved = new_cadence.is_some();
            let row = s.edit(
                &name,
                &ScheduleEdit {
                    function,
                    cadence: new_cadence,
                    input,
                },
            )?;
            if json {
                output::json(&row)?;
            } else {
                println!(
                    "edited schedule {name}: {} runs {} with input {}",
                    row.function,
                    cadence(&row),
                    row.input
                );
                if row.paused {
                    println!("it is paused; `keyhole schedules resume {name}` runs it again");
                } else {
                    println!(
                        "next run at {}{}",
                        output::time(Some(row.next_run_at)),
                        if moved {
                            " (the new cadence starts now)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        SchedulesCmd::List => {
            output::listing(
                json,
                &s.list()?,
                "no schedules yet; add one with `keyhole schedules add NAME --function F --every 5m`",
                &[
                    "NAME",
                    "FUNCTION",
                    "CADENCE",
                    "STATE",
                    "NEXT RUN",
                    "LAST OUTCOME",
                ],
                |r| {
                    let (state, next) = if r.paused {
                        ("paused", "-".into())
                    } else {
                        let state = if r.running_until.is_some() {
                            "running"
                        } else {
                            "active"
                        };
                        (state, output::time(Some(r.next_run_at)))
                    };
                    vec![
                        r.name.clone(),
                        r.function.clone(),
                        cadence(r),
                        state.into(),
                        next,
                        r.last_outcome.clone().unwrap_or_else(|| "-".into()),
                    ]
                },
            )?;
        }
        SchedulesCmd::Show { name } => {
            let row = s.show(&name)?;
            if json {
                output::json(&row)?;
            } else {
                print(&row);
            }
        }
        SchedulesCmd::Pause { name } => {
            let changed = !s.show(&name)?.paused;
            let row = if changed {
                s.pause(&name)?
            } else {
                s.show(&name)?
            };
            if json {
                let mut v = serde_json::to_value(&row)?;
                v["changed"] = changed.into();
                output::json(&v)?;
            } else if changed {
                println!("paused schedule {name}");
            } else {
                println!("schedule {name} is already paused; nothing changed");
            }
        }
        SchedulesCmd::Resume { name } => {
            let was_paused = s.show(&name)?.paused;
            let row = s.resume(&name)?;
            let next = output::time(Some(row.next_run_at));
            if json {
                let mut v = serde_json::to_value(&row)?;
                v["changed"] = was_paused.into();
                output::json(&v)?;
            } else if was_paused {
                println!("resumed schedule {name}; next run at {next}");
            } else {
                println!("schedule {name} is not paused; nothing changed (next run at {next})");
            }
        }
        SchedulesCmd::Release { name, force } => {
            let release = s.release(&name, force)?;
            if json {
                output::json(&release)?;
            } else if let Some(until) = release.released {
                println!(
                    "released schedule {name}: the claim that held it until {} is gone",
                    output::time(Some(until))
                );
                if release.row.paused {
                    println!("it is paused; `keyhole schedules resume {name}` runs it again");
                } else {
                    println!(
                        "next run at {} (under `keyhole serve`; a slot already due runs at once)",
                        output::time(Some(release.row.next_run_at))
                    );
                }
            } else {
                println!("no run holds schedule {name}; nothing changed");
            }
        }
        SchedulesCmd::Delete { name } => {
            s.delete(&name)?;
            if json {
                output::json(&serde_json::json!({ "deleted": name }))?;
            } else {
                println!("deleted schedule {name}");
            }
        }
    }
    Ok(0)
}
