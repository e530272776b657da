//! The plan of `ctl balance`: which models to move between controllers so that their write
//! loads even out. A pure function of the loads the controllers reported and of the moves the
//! migration prechecks refused, so that every case is a table test.
//!
//! A migration is expensive (the model is copied and its agents move), so the plan is the one
//! with the fewest moves that brings the controllers within the tolerance, and among those the
//! one with the smallest spread: found by trying every set of 1, 2, … moves while that stays
//! under a budget of candidates (a few hundred models and controllers). Past the budget, or when
//! no set of at most `max_moves` moves balances the controllers, the plan is greedy: move from
//! the busiest controller to the least loaded one the model whose move brings the two closest
//! together (a model of load `m` across a gap `g` helps only when `m < g`, and most when `m` is
//! nearest `g / 2`), while some move narrows a gap. Either way a model moves at most once, a
//! model that cannot move (the controller model, a migration in flight) stays, and a (model,
//! target) pair a precheck refused is never planned.

use std::collections::{BTreeMap, BTreeSet};

/// Differences smaller than this many writes per second are noise, never worth a migration.
pub const NOISE_WRITES_PER_SECOND: f64 = 1.0;

/// A model as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanModel {
    /// Its uuid (names can repeat across controllers).
    pub uuid: String,
    /// How it is shown: `owner/name`.
    pub name: String,
    /// The controller it is on.
    pub controller: String,
    /// Its write load (writes per second).
    pub load: f64,
    /// Why it cannot move, if it cannot (the controller model, a migration in flight).
    pub pinned: Option<String>,
}

/// One planned migration.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    /// The model's uuid.
    pub uuid: String,
    /// The model, `owner/name`.
    pub model: String,
    /// Its write load.
    pub load: f64,
    /// The controller it leaves.
    pub from: String,
    /// The controller it goes to.
    pub to: String,
    /// The expected load of `from` once this move (and those before it) is done.
    pub from_after: f64,
    /// The expected load of `to` once this move (and those before it) is done.
    pub to_after: f64,
}

/// What `ctl balance` will do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The moves, in the order they run.
    pub moves: Vec<Move>,
    /// Each controller's load now.
    pub before: BTreeMap<String, f64>,
    /// Each controller's load as expected after the plan.
    pub after: BTreeMap<String, f64>,
    /// Whether the loads after the plan are within the tolerance.
    pub balanced: bool,
}

/// Whether `loads` are within `tolerance` (0.25: the busiest at most 1.25 × the least busy), or
/// differ by less than [`NOISE_WRITES_PER_SECOND`].
pub fn is_balanced(loads: &BTreeMap<String, f64>, tolerance: f64) -> bool {
    let (min, max) = min_max(loads);
    max - min < NOISE_WRITES_PER_SECOND || max <= (1.0 + tolerance) * min
}

fn min_max(loads: &BTreeMap<String, f64>) -> (f64, f64) {
    let min = loads.values().copied().fold(f64::INFINITY, f64::min);
    let max = loads.values().copied().fold(0.0, f64::max);
    (if min.is_finite() { min } else { 0.0 }, max)
}

/// The busiest controller over the least busy one (∞ when the least busy has no load).
pub fn spread(loads: &BTreeMap<String, f64>) -> f64 {
    let (min, max) = min_max(loads);
    if max == 0.0 {
        1.0
    } else {
        max / min
    }
}

/// Each controller's load: the sum of its models' loads (every listed controller appears).
pub fn controller_loads(controllers: &[String], models: &[PlanModel]) -> BTreeMap<String, f64> {
    let mut loads: BTreeMap<String, f64> = controllers.iter().map(|c| (c.clone(), 0.0)).collect();
    for model in models {
        if let Some(load) = loads.get_mut(&model.controller) {
            *load += model.load;
        }
    }
    loads
}

/// Candidate placements the exact search may try before the plan falls back to greedy.
pub const SEARCH_BUDGET: usize = 200_000;

/// Plans moves of `models` among `controllers` until their loads are within `tolerance`, at
/// most `max_moves` of them, never one of `refused` (model uuid, target controller).
pub fn plan(
    controllers: &[String],
    models: &[PlanModel],
    refused: &BTreeSet<(String, String)>,
    tolerance: f64,
    max_moves: usize,
) -> Plan {
    let before = controller_loads(controllers, models);
    let placed: Vec<PlanModel> = models
        .iter()
        .filter(|m| before.contains_key(&m.controller))
        .cloned()
        .collect();
    let chosen = if is_balanced(&before, tolerance) {
        Vec::new()
    } else {
        fewest_moves(&before, &placed, refused, tolerance, max_moves)
            .unwrap_or_else(|| greedy(&before, &placed, refused, tolerance, max_moves))
    };
    let mut loads = before.clone();
    let moves = chosen
        .into_iter()
        .map(|(index, to)| {
            let model = &placed[index];
            let from = model.controller.clone();
            *loads.get_mut(&from).expect("a listed controller") -= model.load;
            *loads.get_mut(&to).expect("a listed controller") += model.load;
            Move {
                uuid: model.uuid.clone(),
                model: model.name.clone(),
                load: model.load,
                from_after: loads[&from],
                to_after: loads[&to],
                from,
                to,
            }
        })
        .collect();
    Plan {
        moves,
        balanced: is_balanced(&loads, tolerance),
        before,
        after: loads,
    }
}

/// Whether `model` may be planned onto `to`.
fn may_move(model: &PlanModel, to: &str, refused: &BTreeSet<(String, String)>) -> bool {
    model.pinned.is_none()
        && model.load > 0.0
        && model.controller != to
        && !refused.contains(&(model.uuid.clone(), to.to_string()))
}

/// The smallest set of moves (`placed` index, target) that balances `loads`, the busiest model
/// first; among sets of that size, the one with the smallest spread. `None` when no set of at
/// most `max_moves` does or the search would pass [`SEARCH_BUDGET`].
fn fewest_moves(
    loads: &BTreeMap<String, f64>,
    placed: &[PlanModel],
    refused: &BTreeSet<(String, String)>,
    tolerance: f64,
    max_moves: usize,
) -> Option<Vec<(usize, String)>> {
    let mut candidates: Vec<usize> = (0..placed.len())
        .filter(|i| loads.keys().any(|c| may_move(&placed[*i], c, refused)))
        .collect();
    // Busiest first, so that the first best set found is also the most natural order.
    candidates.sort_by(|a, b| {
        placed[*b]
            .load
            .total_cmp(&placed[*a].load)
            .then(placed[*a].name.cmp(&placed[*b].name))
    });
    let mut search = Search {
        loads: loads.clone(),
        placed,
        refused,
        tolerance,
        candidates: &candidates,
        chosen: Vec::new(),
        best: None,
        budget: SEARCH_BUDGET,
    };
    for size in 1..=max_moves.min(candidates.len()) {
        search.sets_of(size, 0)?;
        if let Some((_, best)) = search.best.take() {
            return Some(best);
        }
    }
    None
}

/// The state of [`fewest_moves`]' depth-first search.
struct Search<'a> {
    loads: BTreeMap<String, f64>,
    placed: &'a [PlanModel],
    refused: &'a BTreeSet<(String, String)>,
    tolerance: f64,
    candidates: &'a [usize],
    chosen: Vec<(usize, String)>,
    /// The balanced set with the smallest spread so far.
    best: Option<(f64, Vec<(usize, String)>)>,
    budget: usize,
}

impl Search<'_> {
    /// Tries every set of `left` more moves of candidates from `from` on; `None` when the
    /// budget ran out.
    fn sets_of(&mut self, left: usize, from: usize) -> Option<()> {
        if left == 0 {
            self.budget = self.budget.checked_sub(1)?;
            if is_balanced(&self.loads, self.tolerance) {
                let spread = spread(&self.loads);
                if self.best.as_ref().is_none_or(|(best, _)| spread < *best) {
                    self.best = Some((spread, self.chosen.clone()));
                }
            }
            return Some(());
        }
        for position in from..self.candidates.len() {
            if self.candidates.len() - position < left {
                break;
            }
            let index = self.candidates[position];
            let model = &self.placed[index];
            let targets: Vec<String> = self
                .loads
                .keys()
                .filter(|c| may_move(model, c, self.refused))
                .cloned()
                .collect();
            for to in targets {
                *self.loads.get_mut(&model.controller).expect("listed") -= model.load;
                *self.loads.get_mut(&to).expect("listed") += model.load;
                self.chosen.push((index, to.clone()));
                let done = self.sets_of(left - 1, position + 1);
                self.chosen.pop();
                *self.loads.get_mut(&to).expect("listed") -= model.load;
                *self.loads.get_mut(&model.controller).expect("listed") += model.load;
                done?;
            }
        }
        Some(())
    }
}

/// Greedy moves: while unbalanced, from the busiest controller that has a helpful move to the
/// least loaded one it helps, the model that brings the two closest together.
fn greedy(
    loads: &BTreeMap<String, f64>,
    placed: &[PlanModel],
    refused: &BTreeSet<(String, String)>,
    tolerance: f64,
    max_moves: usize,
) -> Vec<(usize, String)> {
    let mut loads = loads.clone();
    let mut placed = placed.to_vec();
    let mut chosen: Vec<(usize, String)> = Vec::new();
    while chosen.len() < max_moves && !is_balanced(&loads, tolerance) {
        let Some((index, to)) = greedy_step(&loads, &placed, &chosen, refused) else {
            break;
        };
        let model = &mut placed[index];
        *loads.get_mut(&model.controller).expect("listed") -= model.load;
        *loads.get_mut(&to).expect("listed") += model.load;
        model.controller = to.clone();
        chosen.push((index, to));
    }
    chosen
}

fn greedy_step(
    loads: &BTreeMap<String, f64>,
    placed: &[PlanModel],
    chosen: &[(usize, String)],
    refused: &BTreeSet<(String, String)>,
) -> Option<(usize, String)> {
    // Ties go to the name, so that a plan is the same every time.
    let mut order: Vec<(&String, f64)> = loads.iter().map(|(c, l)| (c, *l)).collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    for (hot, hot_load) in order.iter().rev() {
        for (cold, cold_load) in order.iter().take_while(|(c, _)| c != hot) {
            let gap = hot_load - cold_load;
            let best = placed
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    m.controller == **hot
                        && m.load < gap
                        && may_move(m, cold, refused)
                        && !chosen.iter().any(|(c, _)| c == i)
                })
                // The move that leaves the pair closest (|gap − 2m| smallest), then the busier
                // model, then the name.
                .min_by(|(_, a), (_, b)| {
                    (gap - 2.0 * a.load)
                        .abs()
                        .total_cmp(&(gap - 2.0 * b.load).abs())
                        .then(b.load.total_cmp(&a.load))
                        .then(a.name.cmp(&b.name))
                });
            if let Some((index, _)) = best {
                return Some((index, (*cold).clone()));
            }
        }
    }
    None
}

/// The fewest moves that bring `models` within `tolerance` (`None` if no placement does), by
/// trying every placement of the movable models: the optimum tests and benchmarks compare plans
/// with. Exponential in the models; for a handful of them.
pub fn optimal_moves(
    controllers: &[String],
    models: &[PlanModel],
    refused: &BTreeSet<(String, String)>,
    tolerance: f64,
) -> Option<usize> {
    let movable: Vec<usize> = (0..models.len())
        .filter(|i| models[*i].pinned.is_none())
        .collect();
    let n = controllers.len();
    let total = n
        .checked_pow(u32::try_from(movable.len()).unwrap())
        .unwrap();
    let mut best: Option<usize> = None;
    for mut code in 0..total {
        let mut placed = models.to_vec();
        let mut moves = 0;
        let mut allowed = true;
        for &i in &movable {
            let to = &controllers[code % n];
            code /= n;
            if *to != placed[i].controller {
                moves += 1;
                allowed &= !refused.contains(&(placed[i].uuid.clone(), to.clone()));
                placed[i].controller = to.clone();
            }
        }
        if allowed && is_balanced(&controller_loads(controllers, &placed), tolerance) {
            best = Some(best.map_or(moves, |b| b.min(moves)));
        }
    }
    best
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Models `(name, controller, load)`; `controller/…` names the controller models (pinned).
    pub(crate) fn models(specs: &[(&str, &str, f64)]) -> Vec<PlanModel> {
        specs
            .iter()
            .map(|(name, controller, load)| PlanModel {
                uuid: format!("uuid-{name}"),
                name: (*name).to_string(),
                controller: (*controller).to_string(),
                load: *load,
                pinned: name
                    .starts_with("controller")
                    .then(|| "the controller model".to_string()),
            })
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    struct Case {
        name: &'static str,
        controllers: &'static [&'static str],
        models: &'static [(&'static str, &'static str, f64)],
        refused: &'static [(&'static str, &'static str)],
        /// `(model, from, to)` in order.
        moves: &'static [(&'static str, &'static str, &'static str)],
        balanced: bool,
    }

    const CASES: &[Case] = &[
        Case {
            name: "heterogeneous models, one controller empty: three moves, an exchange among them",
            controllers: &["a", "b", "c"],
            models: &[
                ("controller-a", "a", 2.0),
                ("web", "a", 40.0),
                ("db", "a", 25.0),
                ("cache", "a", 12.0),
                ("batch", "b", 20.0),
                ("mail", "b", 5.0),
            ],
            refused: &[],
            moves: &[("web", "a", "c"), ("cache", "a", "b"), ("mail", "b", "a")],
            balanced: true,
        },
        Case {
            name: "one huge model stays: moving it would only move the imbalance",
            controllers: &["a", "b"],
            models: &[("huge", "a", 100.0), ("small", "a", 3.0), ("x", "b", 10.0)],
            refused: &[],
            moves: &[("small", "a", "b")],
            balanced: false,
        },
        Case {
            name: "equal loads: nothing to do",
            controllers: &["a", "b", "c"],
            models: &[("m1", "a", 10.0), ("m2", "b", 11.0), ("m3", "c", 9.5)],
            refused: &[],
            moves: &[],
            balanced: true,
        },
        Case {
            name: "a controller that refuses every model of the busiest gets none of them",
            controllers: &["a", "b", "c"],
            models: &[
                ("m1", "a", 30.0),
                ("m2", "a", 30.0),
                ("m3", "a", 30.0),
                ("m4", "b", 30.0),
            ],
            refused: &[("m1", "c"), ("m2", "c"), ("m3", "c")],
            moves: &[("m1", "a", "b"), ("m4", "b", "c")],
            balanced: false,
        },
        Case {
            name: "a refused pair is skipped for the next best model",
            controllers: &["a", "b"],
            models: &[("m1", "a", 20.0), ("m2", "a", 18.0), ("m3", "a", 2.0)],
            refused: &[("m1", "b")],
            moves: &[("m2", "a", "b")],
            balanced: true,
        },
        Case {
            name: "the controller model never moves",
            controllers: &["a", "b"],
            models: &[("controller-a", "a", 50.0), ("m1", "a", 5.0)],
            refused: &[],
            moves: &[("m1", "a", "b")],
            balanced: false,
        },
        Case {
            name: "three controllers, six uneven models: greedy would stop at 60/30/50",
            controllers: &["a", "b", "c"],
            models: &[
                ("m1", "a", 50.0),
                ("m2", "a", 30.0),
                ("m3", "a", 30.0),
                ("m4", "b", 20.0),
                ("m5", "b", 10.0),
                ("m6", "c", 0.0),
            ],
            refused: &[],
            moves: &[("m1", "a", "c"), ("m2", "a", "b"), ("m4", "b", "a")],
            balanced: true,
        },
        Case {
            name: "idle controllers: differences below the noise floor",
            controllers: &["a", "b"],
            models: &[("m1", "a", 0.6), ("m2", "a", 0.2)],
            refused: &[],
            moves: &[],
            balanced: true,
        },
    ];

    #[test]
    fn plans() {
        for case in CASES {
            let controllers = names(case.controllers);
            let models = models(case.models);
            let refused: BTreeSet<(String, String)> = case
                .refused
                .iter()
                .map(|(m, c)| (format!("uuid-{m}"), (*c).to_string()))
                .collect();
            let plan = plan(&controllers, &models, &refused, 0.25, 10);
            let got: Vec<(&str, &str, &str)> = plan
                .moves
                .iter()
                .map(|m| (m.model.as_str(), m.from.as_str(), m.to.as_str()))
                .collect();
            assert_eq!(got, case.moves, "{}: {plan:#?}", case.name);
            assert_eq!(plan.balanced, case.balanced, "{}: {plan:#?}", case.name);
            // No refused pair, no pinned model, each model at most once.
            let mut seen = BTreeSet::new();
            for m in &plan.moves {
                assert!(
                    !refused.contains(&(m.uuid.clone(), m.to.clone())),
                    "{}",
                    case.name
                );
                assert!(!m.model.starts_with("controller"), "{}", case.name);
                assert!(seen.insert(m.uuid.clone()), "{}", case.name);
            }
            // The loads after are the loads before with the moves applied.
            let total = |l: &BTreeMap<String, f64>| l.values().sum::<f64>();
            assert!((total(&plan.before) - total(&plan.after)).abs() < 1e-9);
            if let Some(last) = plan.moves.last() {
                assert_eq!(plan.after[&last.to], last.to_after, "{}", case.name);
            }
            // When a balanced plan exists, the greedy one is as short as the optimum.
            if plan.balanced {
                let optimum = optimal_moves(&controllers, &models, &refused, 0.25);
                assert_eq!(Some(plan.moves.len()), optimum, "{}", case.name);
            }
        }
    }

    #[test]
    fn max_moves_bounds_the_plan() {
        let controllers = names(&["a", "b", "c"]);
        let models = models(&[("m1", "a", 60.0), ("m2", "a", 30.0), ("m3", "a", 30.0)]);
        let plan = plan(&controllers, &models, &BTreeSet::new(), 0.25, 1);
        assert_eq!(plan.moves.len(), 1);
        assert!(!plan.balanced);
        // No single move balances them: the greedy step halves the biggest gap.
        assert_eq!(plan.moves[0].model, "m1");
        assert_eq!(plan.moves[0].from_after, 60.0);
        assert_eq!(plan.moves[0].to_after, 60.0);
    }

    #[test]
    fn spreads() {
        let loads = |l: &[f64]| -> BTreeMap<String, f64> {
            l.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), *v))
                .collect()
        };
        assert_eq!(spread(&loads(&[10.0, 12.5])), 1.25);
        assert!(is_balanced(&loads(&[10.0, 12.5]), 0.25));
        assert!(!is_balanced(&loads(&[10.0, 12.6]), 0.25));
        assert!(!is_balanced(&loads(&[0.0, 5.0]), 0.25));
        assert!(spread(&loads(&[0.0, 5.0])).is_infinite());
        assert!(is_balanced(&loads(&[0.0, 0.0]), 0.25));
    }
}
