//! Spending limits, with one owner: every payment a buyer makes passes [`Spending::authorize`]
//! inside the same transaction that writes it to the payment journal, so a per-job cap, a daily
//! cap and a run budget hold by construction — whoever asks for the payment (`job submit
//! --auto-pay`, `pylon pay`, the repo-map coordinator).

use std::sync::Mutex;

/// The caps a buyer pays within (`[buyer]` in config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendLimits {
    /// Most paid for one job whose request names no bid (and whose caller gave no limit).
    /// `None`: such a job cannot be paid automatically at all.
    pub max_job_msats: Option<u64>,
    /// Most paid in any rolling 24 h. `None`: no daily cap.
    pub max_daily_msats: Option<u64>,
}

impl SpendLimits {
    /// No caps: for in-process markets (benchmarks, the demo) that fund themselves.
    pub fn unlimited() -> Self {
        Self {
            max_job_msats: Some(u64::MAX),
            max_daily_msats: None,
        }
    }
}

impl Default for SpendLimits {
    /// The defaults a new home gets (10 sats a job, 100,000 sats a day).
    fn default() -> Self {
        Self {
            max_job_msats: Some(10_000),
            max_daily_msats: Some(100_000_000),
        }
    }
}

/// Why a payment was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpendRefused {
    /// Neither the job nor the caller nor the config set a limit.
    #[error(
        "no spending limit for this job: give a bid (--bid) or --max-sats, or set [buyer] max_job_sats"
    )]
    NoLimit,
    /// Above the per-job cap.
    #[error(
        "asks {asked} msats, above [buyer] max_job_sats ({cap} msats); give a --bid to pay more"
    )]
    OverJobCap {
        /// Asked.
        asked: u64,
        /// Cap.
        cap: u64,
    },
    /// The daily cap would be passed.
    #[error("paying {asked} msats would pass the daily cap: {spent} of {cap} msats spent in the last 24 h ([buyer] max_daily_sats)")]
    OverDaily {
        /// Asked.
        asked: u64,
        /// Spent in the window.
        spent: u64,
        /// Cap.
        cap: u64,
    },
    /// The run's budget would be passed.
    #[error("paying {asked} msats would pass the budget: {committed} of {cap} msats already spent or in flight")]
    OverBudget {
        /// Asked.
        asked: u64,
        /// Spent or in flight in this run.
        committed: u64,
        /// Budget.
        cap: u64,
    },
}

/// A run's budget: what may be spent, what has been (or may have been), what dispatch holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BudgetState {
    /// The cap, msats (`None`: none).
    pub cap: Option<u64>,
    /// Paid, sending or unknown in this run.
    pub committed: u64,
    /// Held by work dispatched but not yet paid.
    pub reserved: u64,
    /// Whether a reservation or payment was refused for lack of budget.
    pub exhausted: bool,
}

/// The caps and the run budget of one buyer.
#[derive(Debug)]
pub struct Spending {
    limits: SpendLimits,
    budget: Mutex<BudgetState>,
}

impl Spending {
    /// Caps `limits`, no run budget.
    pub fn new(limits: SpendLimits) -> Self {
        Self {
            limits,
            budget: Mutex::new(BudgetState::default()),
        }
    }

    /// The configured caps.
    pub fn limits(&self) -> SpendLimits {
        self.limits
    }

    /// Sets the run budget (msats); what was committed so far counts against it.
    pub fn set_budget(&self, cap: Option<u64>) {
        self.lock().cap = cap;
    }

    /// The run budget's state.
    pub fn budget(&self) -> BudgetState {
        *self.lock()
    }

    /// Holds `amount` of the budget for work about to be dispatched (advisory: the payment itself
    /// is checked again by [`Self::authorize`]). False when it would not fit.
    pub fn reserve(&self, amount: u64) -> bool {
        let mut b = self.lock();
        let fits = b
            .cap
            .is_none_or(|cap| b.committed + b.reserved + amount <= cap);
        if fits {
            b.reserved += amount;
        } else {
            b.exhausted = true;
        }
        fits
    }

    /// Gives a reservation back.
    pub fn release(&self, amount: u64) {
        let mut b = self.lock();
        b.reserved = b.reserved.saturating_sub(amount);
    }

    /// The per-job cap alone: whether a job that names no limit may be paid `asked` msats.
    /// Lets a buyer pass over an answer it would never pay while others may still come.
    pub fn check_job_cap(&self, asked: u64, explicit_limit: bool) -> Result<(), SpendRefused> {
        if explicit_limit {
            return Ok(());
        }
        match self.limits.max_job_msats {
            None => Err(SpendRefused::NoLimit),
            Some(cap) if asked > cap => Err(SpendRefused::OverJobCap { asked, cap }),
            Some(_) => Ok(()),
        }
    }

    /// Decides whether `asked` msats may be paid, given `spent_today` (what may have been spent
    /// in the last 24 h) and whether the job or caller set its own limit; on yes, commits it to
    /// the run budget. Call inside the journal's transaction ([`crate::store::Payments::begin`]).
    pub fn authorize(
        &self,
        asked: u64,
        spent_today: u64,
        explicit_limit: bool,
    ) -> Result<(), SpendRefused> {
        self.check_job_cap(asked, explicit_limit)?;
        if let Some(cap) = self.limits.max_daily_msats {
            if spent_today.saturating_add(asked) > cap {
                return Err(SpendRefused::OverDaily {
                    asked,
                    spent: spent_today,
                    cap,
                });
            }
        }
        let mut b = self.lock();
        if let Some(cap) = b.cap {
            if b.committed.saturating_add(asked) > cap {
                b.exhausted = true;
                return Err(SpendRefused::OverBudget {
                    asked,
                    committed: b.committed,
                    cap,
                });
            }
        }
        b.committed += asked;
        Ok(())
    }

    /// A committed payment is known not to have happened: it no longer counts.
    pub fn refund(&self, amount: u64) {
        let mut b = self.lock();
        b.committed = b.committed.saturating_sub(amount);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold() {
        let s = Spending::new(SpendLimits::default());
        assert_eq!(
            s.authorize(50_000_000, 0, false),
            Err(SpendRefused::OverJobCap {
                asked: 50_000_000,
                cap: 10_000
            }),
            "no bid: the per-job default applies"
        );
        assert!(s.authorize(50_000, 0, true).is_ok(), "an explicit bid wins");
        assert!(matches!(
            s.authorize(5_000, 99_999_000, true),
            Err(SpendRefused::OverDaily { .. })
        ));
        let none = Spending::new(SpendLimits {
            max_job_msats: None,
            max_daily_msats: None,
        });
        assert_eq!(none.authorize(1, 0, false), Err(SpendRefused::NoLimit));
    }

    #[test]
    fn the_budget_is_a_hard_cap() {
        let s = Spending::new(SpendLimits::unlimited());
        s.set_budget(Some(3_000));
        assert!(s.reserve(2_000));
        assert!(!s.reserve(2_000), "reservations count");
        s.release(2_000);
        for _ in 0..3 {
            s.authorize(1_000, 0, true).expect("fits");
        }
        assert!(matches!(
            s.authorize(1_000, 0, true),
            Err(SpendRefused::OverBudget {
                committed: 3_000,
                ..
            })
        ));
        assert!(s.budget().exhausted);
        s.refund(1_000);
        assert!(s.authorize(1_000, 0, true).is_ok(), "a refund frees room");
    }
}
