//! `chaos poison`: the fixture poison corpus sent between two halves of good traffic to one
//! worker. Each case is checked on its own, not counted: a dead-letter case must be in the
//! dead-letter queue with an `error-reason` holding its expected text (found by the SQS message
//! id it was sent with, which the worker's copy names as `source-message-id`); an answered case
//! must be answered with every record once, and its bad records as per-record errors with their
//! expected reasons.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::{send_tracked, Outcome, Run};
use crate::bench::load::{self, AnswerBody, DeadLetter, Tally};
use crate::bench::stop;
use ml_pipeline::bundle::compression::{ContentEncoding, CONTENT_ENCODING_ATTRIBUTE};
use ml_pipeline::fixtures::{PoisonCase, PoisonExpect};

/// The `bundle_id` of an answered case's bundle (the generator names them so).
pub fn answer_id(case: &PoisonCase) -> String {
    format!("poison-{}", case.name)
}

/// What came of one case, against what it expects.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseCheck {
    /// The case's name.
    pub name: String,
    /// What happened, in a few words.
    pub got: String,
    /// Each way it differs from what it expects; empty when it is as expected.
    pub problems: Vec<String>,
}

/// Runs the poison scenario.
pub async fn run(run: &Run<'_>) -> anyhow::Result<Outcome> {
    let mut worker = run.spawn("0")?;
    let pid = worker.id();
    let cases = &run.set.poison;
    let answered: HashSet<String> = cases
        .iter()
        .filter(|c| matches!(c.expect, PoisonExpect::Answered { .. }))
        .map(answer_id)
        .collect();
    let mut expected = run.ids();
    expected.extend(answered.iter().cloned());
    let mut plan = run.plan();
    plan.dead_letter_queue = Some(run.dlq.url().to_owned());
    plan.keep_bodies = answered;
    let messages: Vec<(String, Vec<(String, String)>)> = cases
        .iter()
        .map(|c| {
            let attributes = c
                .content_encoding
                .iter()
                .map(|e| (CONTENT_ENCODING_ATTRIBUTE.to_owned(), e.clone()))
                .collect();
            (c.body.clone(), attributes)
        })
        .collect();
    let reader = load::collect(&run.sqs, run.output.url(), &expected, &plan);
    let sender = async {
        let half = run.bundles.len() / 2;
        let (first, rest) = run.bundles.split_at(half);
        let times = load::send(
            &run.input,
            first,
            ContentEncoding::Identity,
            None,
            2,
            run.args.max_message_bytes,
        )
        .await?;
        let sent = send_tracked(&run.sqs, run.input.url(), &messages).await?;
        let later = load::send(
            &run.input,
            rest,
            ContentEncoding::Identity,
            None,
            2,
            run.args.max_message_bytes,
        )
        .await?;
        times.lock().await.extend(later.lock().await.drain());
        anyhow::Ok((times, sent))
    };
    let (arrivals, sent) = tokio::join!(reader, sender);
    let (times, message_ids) = sent?;
    let sources: HashMap<String, usize> = message_ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    let tally = Tally::new(&times.lock().await.clone(), &arrivals);
    let letters = all_dead_letters(run, cases, &sources, arrivals.dead_letters.clone()).await;
    let checks = check_cases(cases, &sources, &letters, &arrivals.bodies);
    let alive = worker.try_wait()?.is_none() && worker.id() == pid;
    stop(&mut worker);
    report(&checks, &letters, &sources);
    let redelivered = super::redelivered(&super::worker_log(&run.run_id, "0"))?;
    println!(
        "  answers the worker gave to a redelivered message (receive count above 1): {redelivered}"
    );
    println!("  worker process {pid} still running without restart: {alive}");
    let mut failures: Vec<String> = checks
        .iter()
        .filter(|c| !c.problems.is_empty())
        .map(|c| format!("poison case {}: {}", c.name, c.problems.join("; ")))
        .collect();
    if !alive {
        failures.push(format!("the worker process {pid} did not survive"));
    }
    if tally.dead_lettered > 0 {
        failures.push(format!(
            "{} good bundles were dead-lettered",
            tally.dead_lettered
        ));
    }
    Ok(Outcome { tally, failures })
}

/// The dead letters the reader saw, plus any still arriving (for up to 30 s) until every
/// dead-letter case has one.
async fn all_dead_letters(
    run: &Run<'_>,
    cases: &[PoisonCase],
    sources: &HashMap<String, usize>,
    mut letters: Vec<DeadLetter>,
) -> Vec<DeadLetter> {
    let wanted: HashSet<&String> = sources
        .iter()
        .filter(|(_, i)| matches!(cases[**i].expect, PoisonExpect::DeadLetter { .. }))
        .map(|(id, _)| id)
        .collect();
    let missing = |seen: &[DeadLetter], more: &[DeadLetter]| {
        let got: HashSet<&str> = seen.iter().chain(more).map(DeadLetter::source).collect();
        wanted.iter().any(|w| !got.contains(w.as_str()))
    };
    if missing(&letters, &[]) {
        let more =
            load::drain_dead_letters(&run.sqs, run.dlq.url(), Duration::from_secs(30), |more| {
                !missing(&letters, more)
            })
            .await;
        letters.extend(more);
    }
    letters
}

fn report(checks: &[CaseCheck], letters: &[DeadLetter], sources: &HashMap<String, usize>) {
    let ok = checks.iter().filter(|c| c.problems.is_empty()).count();
    println!("  poison: {ok} of {} cases as expected", checks.len());
    for c in checks {
        if c.problems.is_empty() {
            println!("    ok    {}: {}", c.name, c.got);
        } else {
            println!(
                "    FAIL  {}: {} -- {}",
                c.name,
                c.got,
                c.problems.join("; ")
            );
        }
    }
    let strays = letters
        .iter()
        .filter(|l| !sources.contains_key(l.source()))
        .count();
    if strays > 0 {
        println!("  dead letters that are no poison case (good traffic?): {strays}");
    }
}

/// Checks every case against the dead letters (matched by the message id each case was sent
/// with, `sources`) and the answer bodies kept by bundle id.
pub fn check_cases(
    cases: &[PoisonCase],
    sources: &HashMap<String, usize>,
    letters: &[DeadLetter],
    bodies: &HashMap<String, Vec<AnswerBody>>,
) -> Vec<CaseCheck> {
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let mine: Vec<&DeadLetter> = letters
                .iter()
                .filter(|l| sources.get(l.source()) == Some(&i))
                .collect();
            let answers = bodies.get(&answer_id(case)).map_or(&[][..], Vec::as_slice);
            match &case.expect {
                PoisonExpect::DeadLetter { reason_contains } => {
                    check_dead(case, reason_contains, &mine)
                }
                PoisonExpect::Answered { errors } => check_answered(case, errors, &mine, answers),
            }
        })
        .collect()
}

fn check_dead(case: &PoisonCase, reason_contains: &str, mine: &[&DeadLetter]) -> CaseCheck {
    let mut problems = Vec::new();
    let got = match mine.first() {
        None => {
            problems.push(format!(
                "not in the dead-letter queue (expected a reason with '{reason_contains}')"
            ));
            "not dead-lettered".to_owned()
        }
        Some(l) => {
            match &l.reason {
                None => problems.push("in the dead-letter queue without an error-reason (SQS's redrive, not the worker)".to_owned()),
                Some(r) if !r.contains(reason_contains) => {
                    problems.push(format!("reason lacks '{reason_contains}'"));
                }
                Some(_) => {}
            }
            let copies = if mine.len() > 1 {
                format!(" ({} copies)", mine.len())
            } else {
                String::new()
            };
            format!(
                "dead-lettered{copies} at {}: {}",
                l.stage.as_deref().unwrap_or("?"),
                l.reason.as_deref().map_or("(no reason)".into(), |r| {
                    ml_pipeline::text::truncate_chars(r, 120)
                })
            )
        }
    };
    CaseCheck {
        name: case.name.clone(),
        got,
        problems,
    }
}

fn check_answered(
    case: &PoisonCase,
    errors: &[(String, String)],
    mine: &[&DeadLetter],
    answers: &[AnswerBody],
) -> CaseCheck {
    let mut problems = Vec::new();
    if let Some(l) = mine.first() {
        problems.push(format!(
            "dead-lettered ({}) instead of answered",
            l.reason.as_deref().unwrap_or("no reason")
        ));
    }
    let Some(answer) = answers.first() else {
        problems.push("not answered".to_owned());
        return CaseCheck {
            name: case.name.clone(),
            got: "no answer".to_owned(),
            problems,
        };
    };
    let answer = match answer.json() {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("answer unreadable: {e:#}"));
            return CaseCheck {
                name: case.name.clone(),
                got: "unreadable answer".to_owned(),
                problems,
            };
        }
    };
    let by_id = |field: &str| -> HashMap<String, Value> {
        answer[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r[0].as_str()?.to_owned(), r.clone())))
            .collect()
    };
    let (rows, errs) = (by_id("rows"), by_id("errors"));
    for (id, want) in errors {
        match errs.get(id) {
            Some(e) if e[1].as_str().is_some_and(|r| r.contains(want.as_str())) => {}
            Some(e) => problems.push(format!("record {id}: reason {} lacks '{want}'", e[1])),
            None if rows.contains_key(id) => problems.push(format!(
                "record {id} answered with a label, expected an error with '{want}'"
            )),
            None => problems.push(format!("record {id} missing from the answer")),
        }
    }
    for id in sent_record_ids(&case.body) {
        if !rows.contains_key(&id) && !errs.contains_key(&id) {
            problems.push(format!("record {id} neither answered nor an error"));
        }
    }
    if answers.len() > 1 {
        problems.push(format!("answered {} times", answers.len()));
    }
    let got = format!(
        "answered: {} rows, {} per-record errors",
        rows.len(),
        errs.len()
    );
    CaseCheck {
        name: case.name.clone(),
        got,
        problems,
    }
}

/// The record ids of a plain v1 bundle body.
fn sent_record_ids(body: &str) -> Vec<String> {
    let bundle: Value = serde_json::from_str(body).unwrap_or_default();
    bundle["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r[0].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_case() -> PoisonCase {
        PoisonCase {
            name: "not-json".into(),
            content_encoding: None,
            body: "nope".into(),
            expect: PoisonExpect::DeadLetter {
                reason_contains: "not valid JSON".into(),
            },
        }
    }

    fn answered_case() -> PoisonCase {
        PoisonCase {
            name: "nul".into(),
            content_encoding: None,
            body: r#"{"bundle_id":"poison-nul","columns":["id"],"rows":[["ok-0"],["bad"]]}"#.into(),
            expect: PoisonExpect::Answered {
                errors: vec![("bad".into(), "control character".into())],
            },
        }
    }

    fn letter(source: &str, reason: Option<&str>) -> DeadLetter {
        DeadLetter {
            source_message_id: reason.map(|_| source.to_owned()),
            message_id: if reason.is_some() {
                "copy".into()
            } else {
                source.to_owned()
            },
            reason: reason.map(str::to_owned),
            stage: Some("decode".into()),
            ..DeadLetter::default()
        }
    }

    fn answer(json: &str) -> HashMap<String, Vec<AnswerBody>> {
        let body = AnswerBody {
            content_encoding: None,
            body: json.to_owned(),
        };
        HashMap::from([("poison-nul".to_owned(), vec![body])])
    }

    const GOOD_ANSWER: &str = r#"{"bundle_id":"poison-nul","rows":[["ok-0","real",1.0,"US-FED"]],"errors":[["bad","standardize: scanner contains the control character U+0000"]]}"#;

    fn problems(
        letters: &[DeadLetter],
        bodies: &HashMap<String, Vec<AnswerBody>>,
    ) -> Vec<Vec<String>> {
        let sources = HashMap::from([("m-0".to_owned(), 0), ("m-1".to_owned(), 1)]);
        check_cases(&[dead_case(), answered_case()], &sources, letters, bodies)
            .into_iter()
            .map(|c| c.problems)
            .collect()
    }

    #[test]
    fn cases_where_they_belong_pass() {
        let got = problems(
            &[letter("m-0", Some("decode: body is not valid JSON: x"))],
            &answer(GOOD_ANSWER),
        );
        assert_eq!(got, vec![Vec::<String>::new(), vec![]]);
    }

    #[test]
    fn a_wrong_reason_a_missing_reason_and_a_missing_case_are_each_reported() {
        let wrong = problems(
            &[letter("m-0", Some("decode: too big"))],
            &answer(GOOD_ANSWER),
        );
        assert!(wrong[0][0].contains("lacks 'not valid JSON'"), "{wrong:?}");
        let redriven = problems(&[letter("m-0", None)], &answer(GOOD_ANSWER));
        assert!(
            redriven[0][0].contains("without an error-reason"),
            "{redriven:?}"
        );
        let missing = problems(
            &[letter("other", Some("not valid JSON"))],
            &answer(GOOD_ANSWER),
        );
        assert!(
            missing[0][0].contains("not in the dead-letter queue"),
            "{missing:?}"
        );
    }

    #[test]
    fn an_answered_case_needs_each_error_with_its_reason_and_every_record() {
        let ok_letter = [letter("m-0", Some("not valid JSON"))];
        let labelled = problems(
            &ok_letter,
            &answer(r#"{"rows":[["ok-0"],["bad"]],"errors":[]}"#),
        );
        assert_eq!(
            labelled[1],
            vec!["record bad answered with a label, expected an error with 'control character'"]
        );
        let wrong = problems(
            &ok_letter,
            &answer(r#"{"rows":[["ok-0"]],"errors":[["bad","enrich: refused"]]}"#),
        );
        assert!(
            wrong[1][0].contains("lacks 'control character'"),
            "{wrong:?}"
        );
        let dropped = problems(
            &ok_letter,
            &answer(r#"{"rows":[],"errors":[["bad","control character"]]}"#),
        );
        assert_eq!(
            dropped[1],
            vec!["record ok-0 neither answered nor an error"]
        );
        let unanswered = problems(&ok_letter, &HashMap::new());
        assert_eq!(unanswered[1], vec!["not answered"]);
        let dead = problems(
            &[
                letter("m-0", Some("not valid JSON")),
                letter("m-1", Some("x")),
            ],
            &answer(GOOD_ANSWER),
        );
        assert_eq!(dead[1], vec!["dead-lettered (x) instead of answered"]);
    }
}
