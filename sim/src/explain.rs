//! `durakv-sim explain`: one self-contained HTML page (inline SVG and a few lines of script, nothing
//! fetched) that shows a run on a timeline a person can read at a glance: a lane per server with
//! its role and term over time, when it was down, every event the harness recorded on it (faults as
//! they fired, crashes, repairs, refusals); a line per scheduled fault across every lane; a lane per
//! client with each operation as a bar from call to return, coloured by outcome; and, for a failed
//! run, the violation: the operation the checker named (and the writes to the same key that overlap
//! it) outlined, and a line at the moment it names. Hovering a mark shows its text and the node's
//! own log lines around it. The time axis zooms (buttons or ctrl+wheel).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::harness::{FINAL_READ_CLIENT, RunResult, Verdict};
use crate::linearizability::{Operation, Outcome, RegisterOp};
use crate::scenario::Scenario;

const LANE: f64 = 34.0;
const LEFT: f64 = 90.0;
/// Pixels per simulated second at zoom 1.
const PX_PER_S: f64 = 40.0;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A trace line ("    1234 server 3 killed") as (ms, text).
fn parse_event(line: &str) -> Option<(u64, &str)> {
    let line = line.trim_start();
    let (t, text) = line.split_once(' ')?;
    Some((t.parse().ok()?, text))
}

/// The server an event is about ("server 3 …", "server 3: …").
fn server_of(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("server ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What an event does to its server's lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Down,
    Up,
    Fault,
    Other,
}

fn kind_of(text: &str) -> Kind {
    let t = text.to_ascii_lowercase();
    if t.contains(" up at applied index") {
        Kind::Up
    } else if t.contains(" killed")
        || t.contains(" lost power")
        || t.contains(" died")
        || t.contains(" stopped")
        || t.contains("refused to start")
    {
        Kind::Down
    } else if [
        "armed",
        "failpoint",
        "partition",
        "bit ",
        "flipped",
        "eio",
        "disk full",
        "torn",
        "crash",
        "rot",
        "cut to",
        "clog",
        "apply failure",
        "power",
    ]
    .iter()
    .any(|k| t.contains(k))
    {
        Kind::Fault
    } else {
        Kind::Other
    }
}

/// Numbers in the failure's explanation that place it: the client it names, a call–return window
/// ("5365–5375 ms") or a moment ("at 4281 ms"), for outlining the operation and drawing the line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pointer {
    client: Option<u64>,
    window: Option<(u64, u64)>,
    at: Option<u64>,
    key: Option<String>,
}

fn pointer(explanation: &str) -> Pointer {
    let mut p = Pointer::default();
    let words: Vec<&str> = explanation.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        let number = |s: &str| s.trim_end_matches([',', ':', ';', ')', '.']).parse::<u64>().ok();
        if *w == "client" && p.client.is_none() {
            p.client = number(next);
        }
        if *w == "key" && p.key.is_none() {
            p.key = Some(next.trim_end_matches(':').trim_matches('"').to_string());
        }
        if let Some((a, b)) = w.split_once('–')
            && let (Ok(a), Some(b)) = (a.parse::<u64>(), number(b))
            && p.window.is_none()
        {
            p.window = Some((a, b));
        }
        if (*w == "at" || *w == "from") && next_is_ms(&words, i + 2) && p.at.is_none() {
            p.at = number(next);
        }
    }
    p
}

fn next_is_ms(words: &[&str], i: usize) -> bool {
    words.get(i).is_some_and(|w| w.starts_with("ms"))
}

fn op_text(op: &Operation) -> String {
    let mut s = String::new();
    for (key, effect) in &op.effects {
        let k = String::from_utf8_lossy(key);
        let shown = |v: &Option<Vec<u8>>| match v {
            None => "nil".to_string(),
            Some(v) if v.len() > 24 => format!("{} bytes", v.len()),
            Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
        };
        let _ = match effect {
            RegisterOp::Write(None) => write!(s, "DEL {k}; "),
            RegisterOp::Write(v) => write!(s, "SET {k} {}; ", shown(v)),
            RegisterOp::Read(v) => write!(s, "GET {k} -> {}; ", shown(v)),
            RegisterOp::WriteExpiring { value, ttl_ms, .. } => {
                write!(s, "SET {k} {} PX {ttl_ms}; ", shown(&Some(value.clone())))
            }
            RegisterOp::CompareAndSet { expected, new } => {
                write!(s, "WATCH {k} … EXEC SET {k} {} if {}; ", shown(&Some(new.clone())), shown(expected))
            }
            RegisterOp::Incr { delta, result } => write!(s, "INCRBY {k} {delta} -> {result:?}; "),
            RegisterOp::Append { suffix, len } => {
                write!(s, "APPEND {k} {:?} -> {len:?}; ", String::from_utf8_lossy(suffix))
            }
        };
    }
    let outcome = match op.outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "failed",
        Outcome::Unknown => "unknown outcome",
    };
    format!("{}{outcome}, server {}, {}–{} ms", s, op.server, op.call, op.ret)
}

/// The page for `r`, a run of `scenario` with `seed`; `replay` is the command that reproduces it.
pub fn html(scenario: &Scenario, seed: u64, r: &RunResult, replay: &str) -> String {
    let events: Vec<(u64, &str)> = r.trace.iter().filter_map(|l| parse_event(l)).collect();
    let end = events
        .iter()
        .map(|(t, _)| *t)
        .chain(r.history.iter().map(|o| o.ret))
        .chain(r.logs.iter().map(|(t, _)| *t))
        .max()
        .unwrap_or(0)
        .max(scenario.duration_ms)
        + 500;
    let x = |t: u64| LEFT + t as f64 / 1000.0 * PX_PER_S;
    let servers: Vec<u64> = (1..=scenario.cluster.nodes + scenario.cluster.spare).collect();
    let mut clients: Vec<u64> = r.history.iter().map(|o| o.client).collect();
    clients.sort_unstable();
    clients.dedup();
    let lane_of_client: BTreeMap<u64, usize> = clients.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let server_y = |id: u64| 30.0 + (id - 1) as f64 * LANE;
    let clients_top = 30.0 + servers.len() as f64 * LANE + 24.0;
    let client_y = |c: u64| clients_top + lane_of_client.get(&c).copied().unwrap_or(0) as f64 * 14.0;
    let height = clients_top + clients.len() as f64 * 14.0 + 30.0;
    let width = x(end) + 20.0;
    let (failure, verdict) = match &r.verdict {
        Verdict::Pass => (None, "passed".to_string()),
        Verdict::Vacuous => (None, "vacuous: no client operation succeeded".to_string()),
        Verdict::Undecided(why) => (None, format!("undecided: {why}")),
        Verdict::Fail(f) => (Some(f), format!("FAILED {}: {}", f.invariant, f.explanation)),
    };
    let logs_near = |server: u64, t: u64| -> String {
        let tag = format!("node={server}");
        let lines: Vec<String> = r
            .logs
            .iter()
            .filter(|(lt, l)| lt.abs_diff(t) <= 150 && l.contains(&tag))
            .take(10)
            .map(|(lt, l)| format!("{lt} {l}"))
            .collect();
        if lines.is_empty() { String::new() } else { format!("\n\nnode log:\n{}", lines.join("\n")) }
    };

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" data-base-width="{width:.0}">"#
    );
    // Time axis: a tick per second (labels every 5).
    for s in 0..=end / 1000 {
        let xs = x(s * 1000);
        let _ = write!(
            svg,
            r##"<line class="tick" x1="{xs:.1}" y1="18" x2="{xs:.1}" y2="{:.0}" stroke="#eee"/>"##,
            height - 20.0
        );
        if s % 5 == 0 {
            let _ = write!(svg, r##"<text x="{xs:.1}" y="12" font-size="10" fill="#666">{s}s</text>"##);
        }
    }
    // Server lanes: background, down periods, leader periods.
    for &id in &servers {
        let y = server_y(id);
        let _ = write!(
            svg,
            r##"<rect class="server-lane" data-server="{id}" x="{LEFT}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#f6f8fa"/><text x="6" y="{:.1}" font-size="12">server {id}</text>"##,
            x(end) - LEFT,
            LANE - 6.0,
            y + 18.0
        );
        // Down periods: from a death to the next start (or the end of the run).
        let mut periods = Vec::new();
        let mut down_since: Option<u64> = None;
        for &(t, text) in &events {
            if server_of(text) != Some(id) {
                continue;
            }
            match kind_of(text) {
                Kind::Down if down_since.is_none() => down_since = Some(t),
                Kind::Up => periods.extend(down_since.take().map(|d| (d, Some(t)))),
                _ => {}
            }
        }
        periods.extend(down_since.map(|d| (d, None)));
        for (d, up) in periods {
            let until = up.map_or(format!("from {d} ms"), |t| format!("{d}–{t} ms"));
            let _ = write!(
                svg,
                r##"<rect class="down" x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#d0d0d0"><title>server {id} down {until}</title></rect>"##,
                x(d),
                (x(up.unwrap_or(end)) - x(d)).max(1.0),
                LANE - 6.0
            );
        }
    }
    // Leadership: from a server's report until another leader of a higher term, or it goes down.
    let mut leaders = r.leaders.clone();
    leaders.sort_unstable();
    for (i, &(t, id, term)) in leaders.iter().enumerate() {
        let next_leader = leaders[i + 1..].iter().find(|l| l.2 > term).map(|l| l.0);
        let down = events
            .iter()
            .find(|(et, text)| *et >= t && server_of(text) == Some(id) && kind_of(text) == Kind::Down)
            .map(|e| e.0);
        let until = [next_leader, down].into_iter().flatten().min().unwrap_or(end);
        let y = server_y(id);
        let _ = write!(
            svg,
            r##"<rect class="leader" data-term="{term}" x="{:.1}" y="{:.1}" width="{:.1}" height="8" fill="#f2c94c"><title>server {id} leader of term {term}, {t}–{until} ms</title></rect><text x="{:.1}" y="{:.1}" font-size="9" fill="#8a6d00">t{term}</text>"##,
            x(t),
            y + LANE - 14.0,
            (x(until) - x(t)).max(1.0),
            x(t) + 2.0,
            y + LANE - 16.0
        );
    }
    // Scheduled faults: a dashed line over every lane.
    for f in &scenario.faults {
        let xs = x(f.at_ms);
        let what = format!(
            "{} on {} at {} ms{}{}",
            f.action.name(),
            f.target,
            f.at_ms,
            f.after_op.as_deref().map(|o| format!(", right after {o}")).unwrap_or_default(),
            f.at.as_deref().map(|a| format!(" ({a})")).unwrap_or_default()
        );
        let _ = write!(
            svg,
            r##"<line class="fault" x1="{xs:.1}" y1="22" x2="{xs:.1}" y2="{:.1}" stroke="#d33" stroke-dasharray="4 3" stroke-width="1.5"><title>{}</title></line>"##,
            clients_top - 8.0,
            esc(&what)
        );
    }
    // Events on their server's lane.
    for &(t, text) in &events {
        let Some(id) = server_of(text) else { continue };
        if id == 0 || id > scenario.cluster.nodes + scenario.cluster.spare {
            continue;
        }
        let (cls, colour) = match kind_of(text) {
            Kind::Down => ("event down-event", "#333"),
            Kind::Up => ("event up-event", "#2a7"),
            Kind::Fault => ("event fault-event", "#d33"),
            Kind::Other => ("event", "#36c"),
        };
        let y = server_y(id) + 9.0;
        let _ = write!(
            svg,
            r#"<circle class="{cls}" cx="{:.1}" cy="{y:.1}" r="4" fill="{colour}"><title>{} ms: {}{}</title></circle>"#,
            x(t),
            t,
            esc(text),
            esc(&logs_near(id, t))
        );
    }
    // Client operations.
    let pointer = failure.map(|f| pointer(&f.explanation)).unwrap_or_default();
    let _ = write!(svg, r##"<text x="6" y="{:.1}" font-size="12">clients</text>"##, clients_top + 10.0);
    for op in &r.history {
        let y = client_y(op.client);
        // An unknown outcome ends where the client stopped waiting (its effect may land later).
        let ret = op.ret.max(op.call);
        let colour = match op.outcome {
            Outcome::Ok => "#5b9",
            Outcome::Fail => "#bbb",
            Outcome::Unknown => "#f90",
        };
        let named = pointer.client == Some(op.client)
            && pointer.window.is_none_or(|(a, b)| op.call <= b && a <= op.ret.max(op.call));
        let same_key = pointer.key.as_deref().is_some_and(|k| {
            op.effects
                .iter()
                .any(|(key, e)| key.as_slice() == k.as_bytes() && !matches!(e, RegisterOp::Read(_)))
        });
        let overlaps = pointer.window.is_some_and(|(a, b)| op.call <= b && a <= ret);
        let class = if named {
            "op violation"
        } else if same_key && overlaps {
            "op conflict"
        } else {
            "op"
        };
        let stroke = match class {
            "op violation" => r##" stroke="#c00" stroke-width="3""##,
            "op conflict" => r##" stroke="#c00" stroke-width="1" stroke-dasharray="2 2""##,
            _ => "",
        };
        let who = if op.client == FINAL_READ_CLIENT {
            "final read".to_string()
        } else {
            format!("client {}", op.client)
        };
        let _ = write!(
            svg,
            r#"<rect class="{class}" x="{:.1}" y="{y:.1}" width="{:.1}" height="10" fill="{colour}"{stroke}><title>{}: {}</title></rect>"#,
            x(op.call),
            (x(ret) - x(op.call)).max(1.5),
            esc(&who),
            esc(&op_text(op))
        );
    }
    // The violation line.
    if let Some(f) = failure {
        let t = pointer.window.map(|w| w.0).or(pointer.at).unwrap_or(end - 500);
        let _ = write!(
            svg,
            r##"<line class="violation-line" x1="{:.1}" y1="18" x2="{:.1}" y2="{:.1}" stroke="#c00" stroke-width="2"><title>{}: {}</title></line>"##,
            x(t),
            x(t),
            height - 20.0,
            esc(f.invariant),
            esc(&f.explanation)
        );
    }
    svg.push_str("</svg>");

    let fault_list: String = scenario
        .faults
        .iter()
        .map(|f| {
            format!(
                "<li>{} ms: <b>{}</b> on {}{}</li>",
                f.at_ms,
                esc(f.action.name()),
                esc(&f.target),
                esc(&[
                    f.after_op.as_deref().map(|o| format!(", right after {o}")),
                    f.path.as_deref().map(|p| format!(" on {p}")),
                    f.at.as_deref().map(|a| format!(" at {a}")),
                    f.effect.as_deref().map(|e| format!(": {e}")),
                    f.with.as_deref().map(|w| format!(", with {w}")),
                ]
                .into_iter()
                .flatten()
                .collect::<String>())
            )
        })
        .collect();
    let verdict_class = if failure.is_some() { "fail" } else { "pass" };
    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{name} seed {seed}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 16px; margin: 0 0 6px; }}
.verdict.fail {{ color: #c00; font-weight: bold; }} .verdict.pass {{ color: #2a7; }}
#scroll {{ overflow-x: auto; border: 1px solid #ddd; }}
code {{ background: #f3f3f3; padding: 1px 4px; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
.sw {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: middle; }}
</style></head><body data-rendered="no">
<h1>{name}, seed {seed}</h1>
<p class="verdict {verdict_class}">{verdict}</p>
<p>Replay: <code>{replay}</code> · <button id="zin">zoom in</button> <button id="zout">zoom out</button> (or ctrl + wheel)</p>
<p class="legend"><span><i class="sw" style="background:#f2c94c"></i>leader (term)</span><span><i class="sw" style="background:#d0d0d0"></i>down</span><span><i class="sw" style="background:#d33"></i>fault</span><span><i class="sw" style="background:#5b9"></i>ok</span><span><i class="sw" style="background:#bbb"></i>failed</span><span><i class="sw" style="background:#f90"></i>unknown outcome</span><span><i class="sw" style="border:2px solid #c00"></i>the operation the checker names</span></p>
<div id="scroll">{svg}</div>
<h2 style="font-size:14px">Faults</h2><ul>{fault_list}</ul>
<script>
(function() {{
  var svg = document.getElementById('timeline');
  var base = parseFloat(svg.getAttribute('data-base-width'));
  var h = svg.getAttribute('height');
  svg.setAttribute('viewBox', '0 0 ' + base + ' ' + h);
  svg.setAttribute('preserveAspectRatio', 'none');
  var zoom = 1;
  function apply() {{ svg.setAttribute('width', Math.round(base * zoom)); }}
  document.getElementById('zin').onclick = function() {{ zoom = Math.min(zoom * 1.5, 40); apply(); }};
  document.getElementById('zout').onclick = function() {{ zoom = Math.max(zoom / 1.5, 0.2); apply(); }};
  document.getElementById('scroll').addEventListener('wheel', function(e) {{
    if (!e.ctrlKey) return;
    e.preventDefault();
    zoom = e.deltaY < 0 ? Math.min(zoom * 1.2, 40) : Math.max(zoom / 1.2, 0.2);
    apply();
  }}, {{ passive: false }});
  document.body.setAttribute('data-rendered', 'yes');
}})();
</script>
</body></html>
"##,
        name = esc(&scenario.name),
        verdict = esc(&verdict),
        replay = esc(replay),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_explanation_points_at_its_client_window_and_key() {
        let p = pointer(
            "key \"l0\": a GET at 5365–5375 ms by client 2 misses \"0.97\", whose APPEND was acknowledged at 4764 ms",
        );
        assert_eq!(p.client, Some(2));
        assert_eq!(p.window, Some((5365, 5375)));
        assert_eq!(p.key.as_deref(), Some("l0"));
        assert_eq!(pointer("two leaders in term 2: server 2 from 8010 ms").at, Some(8010));
    }

    #[test]
    fn events_are_sorted_into_lanes_and_kinds() {
        assert_eq!(parse_event("    2011 server 3 killed"), Some((2011, "server 3 killed")));
        assert_eq!(server_of("server 3: crash armed"), Some(3));
        assert_eq!(kind_of("server 3 killed"), Kind::Down);
        assert_eq!(kind_of("server 3 up at applied index 58"), Kind::Up);
        assert_eq!(kind_of("server 3: bit rot on Read of */raft/*.wal"), Kind::Fault);
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
