//! Tests of [`Filter`]: the examples of Consul's filtering documentation,
//! each operator and its edge cases, precedence, quoting, errors with their
//! offsets, the regular-expression engine, and property tests that nothing
//! panics.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::regex::{Regex, RegexError};
use super::*;

fn f(expr: &str) -> Filter {
    Filter::parse(expr).unwrap_or_else(|e| panic!("{expr:?} should parse: {e}"))
}

fn check(expr: &str, row: &Value) -> bool {
    f(expr)
        .matches(row)
        .unwrap_or_else(|e| panic!("{expr:?} should evaluate: {e}"))
}

fn parse_err(expr: &str) -> (usize, String) {
    match Filter::parse(expr) {
        Err(FilterError::Parse { at, msg, .. }) => (at, msg),
        other => panic!("{expr:?} should be a parse error, got {other:?}"),
    }
}

fn eval_err(expr: &str, row: &Value) -> FilterError {
    match f(expr).matches(row) {
        Err(e) => e,
        Ok(b) => panic!("{expr:?} should fail to evaluate, got {b}"),
    }
}

/// The three rows of the `/v1/catalog/service/api-internal` example in
/// Consul's filtering documentation.
fn catalog_rows() -> Vec<Value> {
    let row = |id: &str, node: &str, addr: &str, meta: Value, tags: Value, env: &str, idx: u64| {
        json!({
            "ID": id,
            "Node": node,
            "Address": addr,
            "Datacenter": "dc1",
            "TaggedAddresses": null,
            "NodeMeta": meta,
            "ServiceKind": "",
            "ServiceID": "api-internal",
            "ServiceName": "api-internal",
            "ServiceTags": tags,
            "ServiceAddress": "",
            "ServiceWeights": {"Passing": 1, "Warning": 1},
            "ServiceMeta": {"environment": env},
            "ServicePort": 9090,
            "ServiceEnableTagOverride": false,
            "ServiceProxy": {},
            "ServiceConnect": {},
            "CreateIndex": idx,
            "ModifyIndex": idx
        })
    };
    vec![
        row(
            "b4f64e8c-5c7d-11e9-bf68-8c8590bd0966",
            "node-1",
            "198.18.0.1",
            json!({"agent": "true", "arch": "i386", "os": "darwin"}),
            json!(["tag"]),
            "qa",
            30,
        ),
        row(
            "b4faf93a-5c7d-11e9-840d-8c8590bd0966",
            "node-2",
            "198.18.0.2",
            json!({"arch": "arm", "os": "linux"}),
            json!(["test", "tag"]),
            "production",
            29,
        ),
        row(
            "b4fbe7f4-5c7d-11e9-ac82-8c8590bd0966",
            "node-4",
            "198.18.0.4",
            json!({"arch": "i386", "os": "freebsd"}),
            json!([]),
            "qa",
            28,
        ),
    ]
}

/// The two rows of the `/v1/health/node/node-1` example.
fn health_node_rows() -> Vec<Value> {
    vec![
        json!({
            "Node": "node-1", "CheckID": "node-health", "Name": "Node level check",
            "Status": "critical", "Notes": "", "Output": "", "ServiceID": "",
            "ServiceName": "", "ServiceTags": [], "Definition": {},
            "CreateIndex": 13, "ModifyIndex": 13
        }),
        json!({
            "Node": "node-1", "CheckID": "svc-web-health", "Name": "Service level check - web",
            "Status": "warning", "Notes": "", "Output": "", "ServiceID": "",
            "ServiceName": "web", "ServiceTags": [], "Definition": {},
            "CreateIndex": 18, "ModifyIndex": 18
        }),
    ]
}

/// The three services of the `/v1/agent/services` example.
fn agent_rows() -> Vec<Value> {
    let svc = |id: &str, tags: Value, meta: Value, port: u16| {
        json!({
            "ID": id, "Service": "redis", "Tags": tags, "Meta": meta, "Port": port,
            "Address": "", "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": false
        })
    };
    vec![
        svc(
            "redis1",
            json!(["primary", "production"]),
            json!({"env": "production", "foo": "bar"}),
            1234,
        ),
        svc(
            "redis2",
            json!(["secondary", "production"]),
            json!({"env": "production", "foo": "bar"}),
            1235,
        ),
        svc(
            "redis3",
            json!(["primary", "qa"]),
            json!({"env": "qa"}),
            1234,
        ),
    ]
}

/// `/v1/health/service/fcs` entries: node, service and checks nested.
fn health_service_rows() -> Vec<Value> {
    let entry =
        |node: &str, env: &str, tags: Value, port: u16, version: &str, statuses: &[&str]| {
            let checks: Vec<Value> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({
                        "Node": node, "CheckID": format!("check-{i}"), "Name": "check",
                        "Status": s, "ServiceID": "fcs", "ServiceName": "fcs",
                        "ServiceTags": [], "Output": "", "Notes": ""
                    })
                })
                .collect();
            json!({
                "Node": {
                    "ID": "", "Node": node, "Address": "10.0.0.1", "Datacenter": "dc1",
                    "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {"env": env}
                },
                "Service": {
                    "ID": "fcs", "Service": "fcs", "Tags": tags, "Address": "",
                    "Meta": {"version": version}, "Port": port,
                    "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false
                },
                "Checks": checks
            })
        };
    vec![
        entry(
            "fcs00",
            "prod",
            json!(["v1", "primary"]),
            8181,
            "1",
            &["passing", "passing"],
        ),
        entry(
            "fcs01",
            "prod",
            json!(["v2"]),
            8182,
            "2",
            &["passing", "critical"],
        ),
        entry("fcs02", "qa", json!([]), 8181, "1", &[]),
    ]
}

fn field(rows: &[Value], name: &str) -> Vec<String> {
    rows.iter()
        .map(|r| match &r[name] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn nodes(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["Node"]["Node"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn keep(expr: &str, rows: Vec<Value>) -> Vec<Value> {
    apply(&f(expr), rows).unwrap_or_else(|e| panic!("{expr:?}: {e}"))
}

// --- Consul's documented examples -----------------------------------------

#[test]
fn doc_catalog_service_example() {
    let kept = keep(r#"NodeMeta.os == "linux""#, catalog_rows());
    assert_eq!(field(&kept, "Node"), ["node-2"]);
    // The doc's selector section: ServiceMeta.foo and ServiceMeta["foo"].
    let kept = keep(r#"ServiceMeta["environment"] == qa"#, catalog_rows());
    assert_eq!(field(&kept, "Node"), ["node-1", "node-4"]);
    let kept = keep("ServiceMeta.environment == qa", catalog_rows());
    assert_eq!(field(&kept, "Node"), ["node-1", "node-4"]);
    let kept = keep(r#""tag" in ServiceTags"#, catalog_rows());
    assert_eq!(field(&kept, "Node"), ["node-1", "node-2"]);
    let kept = keep("ServiceTags is empty", catalog_rows());
    assert_eq!(field(&kept, "Node"), ["node-4"]);
    let kept = keep("NodeMeta.agent != true", catalog_rows());
    assert_eq!(field(&kept, "Node"), ["node-2", "node-4"]);
    let kept = keep(
        "ServicePort == 9090 and ServiceEnableTagOverride == false",
        catalog_rows(),
    );
    assert_eq!(kept.len(), 3);
    // TaggedAddresses is null: an absent map.
    let kept = keep(
        "TaggedAddresses is empty and TaggedAddresses.lan != x",
        catalog_rows(),
    );
    assert_eq!(kept.len(), 3);
}

#[test]
fn doc_health_node_example() {
    let kept = keep(r#"ServiceName != """#, health_node_rows());
    assert_eq!(field(&kept, "CheckID"), ["svc-web-health"]);
    let kept = keep(
        "Status == critical or Status == warning",
        health_node_rows(),
    );
    assert_eq!(kept.len(), 2);
}

#[test]
fn doc_agent_services_example() {
    let kept = keep(r#"Meta.env == "qa""#, agent_rows());
    assert_eq!(field(&kept, "ID"), ["redis3"]);
    let kept = keep(r#"primary in Tags and Meta.foo == bar"#, agent_rows());
    assert_eq!(field(&kept, "ID"), ["redis1"]);
    let kept = keep("Port == 1234", agent_rows());
    assert_eq!(field(&kept, "ID"), ["redis1", "redis3"]);
}

#[test]
fn health_service_examples() {
    let rows = health_service_rows;
    assert_eq!(
        nodes(&keep(r#"Service.Tags contains "v1""#, rows())),
        ["fcs00"]
    );
    assert_eq!(nodes(&keep(r#""v1" in Service.Tags"#, rows())), ["fcs00"]);
    assert_eq!(
        nodes(&keep(r#""v1" not in Service.Tags"#, rows())),
        ["fcs01", "fcs02"]
    );
    assert_eq!(
        nodes(&keep("Node.Meta.env == prod", rows())),
        ["fcs00", "fcs01"]
    );
    assert_eq!(
        nodes(&keep("Service.Port == 8181", rows())),
        ["fcs00", "fcs02"]
    );
    assert_eq!(nodes(&keep("Service.Port != 8181", rows())), ["fcs01"]);
    // Meta values are strings; a bare number literal compares as text.
    assert_eq!(nodes(&keep("Service.Meta.version == 2", rows())), ["fcs01"]);
    assert_eq!(
        nodes(&keep("Service.Tags is not empty", rows())),
        ["fcs00", "fcs01"]
    );
    // Through the list of checks: any element.
    assert_eq!(nodes(&keep("Checks.Status == critical", rows())), ["fcs01"]);
    assert_eq!(nodes(&keep("Checks.Status != passing", rows())), ["fcs01"]);
    assert_eq!(
        nodes(&keep("not (Checks.Status != passing)", rows())),
        ["fcs00", "fcs02"]
    );
    assert_eq!(nodes(&keep("Checks is empty", rows())), ["fcs02"]);
    assert_eq!(
        nodes(&keep("Checks.0.Status == passing", rows())),
        ["fcs00", "fcs01"]
    );
    assert_eq!(
        nodes(&keep(
            r#"Node.TaggedAddresses["lan"] == "10.0.0.1""#,
            rows()
        ))
        .len(),
        3
    );
    assert_eq!(
        nodes(&keep(
            r#"Node.Meta.env == prod and (Service.Tags contains v2 or Service.Meta.version == "1")"#,
            rows()
        )),
        ["fcs00", "fcs01"]
    );
    assert_eq!(
        nodes(&keep("Node.Node matches `^fcs0[02]$`", rows())),
        ["fcs00", "fcs02"]
    );
}

// --- Operators --------------------------------------------------------------

fn sample() -> Value {
    json!({
        "Name": "web-1",
        "Empty": "",
        "Port": 8080,
        "Weight": 1.5,
        "Big": 18446744073709551615u64,
        "Neg": -3,
        "Enabled": true,
        "Tags": ["a", "b c", "1"],
        "Mixed": ["x", 2, true, null],
        "Nested": [["x"]],
        "NoTags": [],
        "Meta": {"env": "prod", "some key": "v", "some-key": "w", "Version": "2"},
        "EmptyMeta": {},
        "Nothing": null,
        "Sub": {"Field": "f", "Inner": {"Deep": "d"}},
        "Items": [{"Kind": "k1"}, {"Kind": "k2"}]
    })
}

#[test]
fn equality_by_type() {
    let row = sample();
    assert!(!check(r#"Name == "web-1x""#, &row));
    assert!(check(r#"Name == "web-1""#, &row));
    assert!(check("Name != other", &row));
    assert!(check(r#"Empty == """#, &row));
    assert!(check("Port == 8080", &row));
    assert!(check(r#"Port == "8080""#, &row));
    assert!(check("Port == 8080.0", &row));
    assert!(!check("Port == 8081", &row));
    assert!(check("Weight == 1.5", &row));
    assert!(check("Big == 18446744073709551615", &row));
    assert!(check("Neg == -3", &row));
    assert!(check("Enabled == true", &row));
    assert!(check("Enabled == True", &row));
    assert!(check("Enabled == 1", &row));
    assert!(check("Enabled != false", &row));
    assert!(check(r#"Nothing == """#, &row));
    assert!(!check("Nothing == x", &row));
}

#[test]
fn equality_errors() {
    let row = sample();
    let e = eval_err("Port == abc", &row);
    assert!(
        matches!(&e, FilterError::Evaluation(m) if m.contains("Port") && m.contains("abc")),
        "{e}"
    );
    let e = eval_err("Enabled == yes", &row);
    assert!(
        matches!(&e, FilterError::Evaluation(m) if m.contains("Enabled")),
        "{e}"
    );
    let e = eval_err("Tags == a", &row);
    assert!(
        matches!(&e, FilterError::Evaluation(m) if m.contains("Tags")),
        "{e}"
    );
    let e = eval_err("Meta == a", &row);
    assert!(
        matches!(&e, FilterError::Evaluation(m) if m.contains("Meta")),
        "{e}"
    );
    assert!(e.to_string().starts_with("Failed to evaluate filter"));
    assert!(matches!(
        eval_err("Port == inf", &row),
        FilterError::Evaluation(_)
    ));
}

#[test]
fn in_and_contains() {
    let row = sample();
    assert!(check(r#""a" in Tags"#, &row));
    assert!(check("a in Tags", &row));
    assert!(check(r#"Tags contains "b c""#, &row));
    assert!(
        !check(r#"Tags contains "b""#, &row),
        "list membership is exact"
    );
    assert!(check("Tags contains 1", &row));
    assert!(check(r#""z" not in Tags"#, &row));
    assert!(check("Tags not contains z", &row));
    assert!(!check("a not in Tags", &row));
    // Mixed lists: each element read as its own type, others skipped.
    assert!(check("2 in Mixed", &row));
    assert!(check("true in Mixed", &row));
    assert!(check("x in Mixed", &row));
    assert!(!check("y in Mixed", &row));
    // Map keys.
    assert!(check("env in Meta", &row));
    assert!(check(r#"Meta contains "some key""#, &row));
    assert!(!check("prod in Meta", &row), "map values are not searched");
    // Substrings.
    assert!(check(r#""eb-" in Name"#, &row));
    assert!(check("Name contains web", &row));
    assert!(check(r#""" in Empty"#, &row));
    assert!(check("Name not contains xyz", &row));
    // Empty containers and null.
    assert!(!check("a in NoTags", &row));
    assert!(check("a not in NoTags", &row));
    assert!(!check("a in Nothing", &row));
    assert!(check("a not in Nothing", &row));
}

#[test]
fn in_errors() {
    let row = sample();
    let e = eval_err("1 in Port", &row);
    assert!(
        matches!(&e, FilterError::Evaluation(m) if m.contains("Port")),
        "{e}"
    );
    assert!(matches!(
        eval_err("Enabled contains x", &row),
        FilterError::Evaluation(_)
    ));
    assert!(matches!(
        eval_err("x in Nested", &row),
        FilterError::Evaluation(_)
    ));
}

#[test]
fn emptiness() {
    let row = sample();
    assert!(check("Empty is empty", &row));
    assert!(check("Name is not empty", &row));
    assert!(check("NoTags is empty", &row));
    assert!(check("Tags is not empty", &row));
    assert!(check("EmptyMeta is empty", &row));
    assert!(check("Meta is not empty", &row));
    assert!(check("Nothing is empty", &row));
    assert!(check("Meta.missing is empty", &row));
    assert!(!check("Meta.missing is not empty", &row));
    assert!(matches!(
        eval_err("Port is empty", &row),
        FilterError::Evaluation(_)
    ));
    assert!(matches!(
        eval_err("Enabled is not empty", &row),
        FilterError::Evaluation(_)
    ));
}

#[test]
fn regex_matching() {
    let row = sample();
    assert!(check(r#"Name matches "^web-[0-9]+$""#, &row));
    assert!(check("Name matches `eb`", &row), "unanchored");
    assert!(check(r#"Name not matches "^db""#, &row));
    assert!(check(r#"Name matches "(?i)WEB""#, &row));
    assert!(check(r#"Meta.env matches "^(prod|staging)$""#, &row));
    assert!(!check(r#"Meta.missing matches ".*""#, &row));
    assert!(check(r#"Meta.missing not matches ".*""#, &row));
    assert!(check(r#"Nothing matches "^$""#, &row));
    assert!(matches!(
        eval_err(r#"Port matches "8""#, &row),
        FilterError::Evaluation(_)
    ));
    // Through a list: any element.
    assert!(check(r#"Items.Kind matches "2$""#, &row));
    let (at, msg) = parse_err(r#"Name matches "a(b""#);
    assert_eq!(at, 13);
    assert!(
        msg.contains("Failed to compile regular expression"),
        "{msg}"
    );
    match Filter::parse(r#"Name matches "\\pL""#) {
        Err(FilterError::Unsupported(m)) => assert!(m.contains("matches"), "{m}"),
        other => panic!("{other:?}"),
    }
}

// --- Selectors and missing fields ------------------------------------------

#[test]
fn selector_forms() {
    let row = sample();
    assert!(check(r#"Meta["some key"] == v"#, &row));
    assert!(check(r#"Meta[ "some-key" ] == w"#, &row));
    assert!(check("Meta[`some-key`] == w", &row));
    assert!(check(r#""/Meta/some-key" == w"#, &row), "JSON pointer");
    assert!(check(r#"w in "/Meta/some-key""#, &row));
    assert!(check("Sub.Inner.Deep == d", &row));
    assert!(check(r#"Sub["Inner"].Deep == d"#, &row));
    assert!(check("Tags.1 == \"b c\"", &row));
    assert!(check(r#"Tags["0"] == a"#, &row));
    assert!(check("Items.Kind == k1 and Items.Kind == k2", &row));
    assert!(
        check("Meta.Version == 2", &row),
        "Meta is a map whatever its keys"
    );
}

#[test]
fn missing_map_keys_are_absent_values() {
    let row = sample();
    assert!(!check("Meta.nope == x", &row));
    assert!(check("Meta.nope != x", &row));
    assert!(!check("x in Meta.nope", &row));
    assert!(check("x not in Meta.nope", &row));
    assert!(check("EmptyMeta.nope != x", &row));
    assert!(check("Nothing.nope != x", &row));
    assert!(check(r#"Meta["no such"] is empty"#, &row));
}

#[test]
fn missing_struct_fields_are_errors() {
    let row = sample();
    match eval_err("Nmae == x", &row) {
        FilterError::BadSelector(m) => assert!(m.contains("Nmae"), "{m}"),
        other => panic!("{other:?}"),
    }
    match eval_err("Sub.Nope != x", &row) {
        FilterError::BadSelector(m) => {
            assert!(m.contains("Sub.Nope") && m.contains("\"Nope\""), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        eval_err("Name.Foo == x", &row),
        FilterError::BadSelector(_)
    ));
    assert!(matches!(
        eval_err("Port.Foo == x", &row),
        FilterError::BadSelector(_)
    ));
    assert!(
        !check("Tags.9 == x", &row),
        "an index past the end is an absent value"
    );
    assert!(check("Tags.9 is empty", &row));
    assert!(matches!(
        eval_err("Items.Nope == x", &row),
        FilterError::BadSelector(_)
    ));
    assert!(matches!(
        eval_err("Tags.Foo == x", &row),
        FilterError::BadSelector(_)
    ));
    let e = eval_err("Nmae == x", &row);
    assert!(e.to_string().contains("Nmae"), "{e}");
    // A scalar row has no fields.
    assert!(matches!(
        f("A == b").matches(&json!("s")),
        Err(FilterError::BadSelector(_))
    ));
}

#[test]
fn short_circuit_skips_errors_like_go_bexpr() {
    let row = sample();
    assert!(check(r#"Name == "web-1" or Nmae == x"#, &row));
    assert!(!check("Name == other and Nmae == x", &row));
    assert!(matches!(
        f("Name == other or Nmae == x").matches(&row),
        Err(FilterError::BadSelector(_))
    ));
}

#[test]
fn apply_keeps_order_and_stops_at_errors() {
    let rows = vec![
        json!({"A": "1"}),
        json!({"A": "2"}),
        json!({"A": "1", "B": 1}),
    ];
    let kept = apply(&f("A == 1"), rows.clone()).unwrap();
    assert_eq!(kept, vec![rows[0].clone(), rows[2].clone()]);
    assert_eq!(
        apply(&f("A == 3"), rows.clone()).unwrap(),
        Vec::<Value>::new()
    );
    assert!(matches!(
        apply(&f("B == 1"), rows),
        Err(FilterError::BadSelector(_))
    ));
}

// --- Logic and precedence ---------------------------------------------------

#[test]
fn precedence_not_and_or() {
    let row = json!({"A": "1", "B": "1", "C": "1"});
    // a and not b or c == (a and (not b)) or c
    for (a, b, c) in [
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (0, 1, 1),
        (1, 0, 0),
        (1, 0, 1),
        (1, 1, 0),
        (1, 1, 1),
    ] {
        let expr = format!("A == {a} and not B == {b} or C == {c}");
        let paren = format!("(A == {a} and (not B == {b})) or C == {c}");
        let wrong = format!("A == {a} and not (B == {b} or C == {c})");
        let expect = (a == 1 && b != 1) || c == 1;
        assert_eq!(check(&expr, &row), expect, "{expr}");
        assert_eq!(check(&paren, &row), expect, "{paren}");
        assert_eq!(
            check(&wrong, &row),
            a == 1 && !(b == 1 || c == 1),
            "{wrong}"
        );
    }
    assert!(check("A == 2 or A == 1 and B == 1", &row));
    assert!(!check("(A == 2 or A == 1) and B == 2", &row));
    assert!(check("not not A == 1", &row));
    assert!(check("not not not A == 2", &row));
    assert!(check("not(A == 2)", &row));
    assert!(check("((((A == 1))))", &row));
    assert!(check("  ( A == 1 )  ", &row));
    assert!(check("A==1 and B==1", &row));
    assert!(check("A == 1\n\tand\r\nB == 1", &row));
}

#[test]
fn keywords_as_names() {
    let row = json!({"not": "x", "and": "y", "in": ["or"], "Or": "z", "notes": "n"});
    assert!(check("not == x", &row), "a selector named not");
    assert!(check("not != y", &row));
    assert!(check("and == y", &row));
    assert!(check("or in in", &row));
    assert!(check("notes == n and Or == z", &row));
    assert!(check("not notes == m", &row));
}

// --- Quoting ----------------------------------------------------------------

#[test]
fn quoting() {
    let row = json!({"S": "a\"b\\c\td é", "R": "C:\\path\\n", "U": "ü", "Dot": "a.b", "Sp": "with space"});
    assert!(check(r#"S == "a\"b\\c\td \u00e9""#, &row));
    assert!(check(r#"S == "a\x22b\x5cc\x09d \U000000e9""#, &row));
    assert!(check(r#"S == "a\042b\134c\011d é""#, &row));
    assert!(check(r"R == `C:\path\n`", &row));
    assert_eq!(parse_err("U == ü").0, 5, "bare words are ASCII");
    assert!(check(r#"U == "ü""#, &row));
    assert!(check("Dot == a.b", &row), "a bare dotted word is its text");
    assert!(check(r#"Sp == "with space""#, &row));
    assert!(check("Sp == `with space`", &row));
    assert!(check(r#"Sp contains " ""#, &row));
}

// --- Parse errors -----------------------------------------------------------

#[test]
fn parse_errors_name_offset_and_token() {
    let (at, msg) = parse_err("");
    assert_eq!(at, 0);
    assert!(msg.contains("empty"), "{msg}");
    let (at, msg) = parse_err("Name =! x");
    assert_eq!(at, 5);
    assert!(
        msg.contains("expected an operator") && msg.contains("'='"),
        "{msg}"
    );
    let (at, msg) = parse_err("Name == x and");
    assert_eq!(at, 13);
    assert!(msg.contains("end of input"), "{msg}");
    let (at, msg) = parse_err("Name == x andy == z");
    assert_eq!(at, 10);
    assert!(msg.contains("\"andy\""), "{msg}");
    let (at, msg) = parse_err("(Name == x");
    assert_eq!(at, 10);
    assert!(msg.contains("Unmatched parentheses"), "{msg}");
    let (at, msg) = parse_err("Name == x)");
    assert_eq!(at, 9);
    assert!(msg.contains("')'"), "{msg}");
    let (at, msg) = parse_err(r#"Name == "abc"#);
    assert_eq!(at, 8);
    assert!(msg.contains("Unterminated string literal"), "{msg}");
    let (at, msg) = parse_err("Name == `abc");
    assert_eq!(at, 8);
    assert!(msg.contains("Unterminated"), "{msg}");
    let (at, msg) = parse_err(r#"Name == "a\qb""#);
    assert_eq!(at, 10);
    assert!(msg.contains("\\q"), "{msg}");
    let (at, msg) = parse_err("Port == 08");
    assert_eq!(at, 8);
    assert!(msg.contains("Invalid number literal \"08\""), "{msg}");
    let (at, msg) = parse_err("Port == 1.");
    assert_eq!(at, 8);
    assert!(msg.contains("Invalid number literal"), "{msg}");
    let (at, msg) = parse_err("Port == 80x");
    assert_eq!(at, 8);
    assert!(msg.contains("\"80x\""), "{msg}");
    let (at, msg) = parse_err("Meta.some-key == x");
    assert_eq!(at, 9);
    assert!(
        msg.contains("Meta[\\\"some-key\\\"]") || msg.contains("Meta[\"some-key\"]"),
        "{msg}"
    );
    let (at, msg) = parse_err("Name == foo-bar");
    assert_eq!(at, 11);
    assert!(msg.contains("foo-bar"), "{msg}");
    let (at, msg) = parse_err(r#"Meta[env] == x"#);
    assert_eq!(at, 5);
    assert!(msg.contains("Invalid index"), "{msg}");
    let (at, msg) = parse_err(r#"Meta["env" == x"#);
    assert_eq!(at, 11);
    assert!(msg.contains("Unclosed index"), "{msg}");
    let (at, msg) = parse_err("Meta. == x");
    assert_eq!(at, 4);
    assert!(msg.contains("after \".\""), "{msg}");
    let (at, msg) = parse_err(r#""x" == Name"#);
    assert_eq!(at, 0);
    assert!(msg.contains("expected a selector before \"==\""), "{msg}");
    let (at, msg) = parse_err("5 is empty");
    assert_eq!(at, 0);
    assert!(msg.contains("number 5"), "{msg}");
    let (at, msg) = parse_err(r#"x in "y""#);
    assert_eq!(at, 5);
    assert!(msg.contains("Invalid selector"), "{msg}");
    let (at, msg) = parse_err("x in 5");
    assert_eq!(at, 5);
    assert!(msg.contains("number 5"), "{msg}");
    let (at, msg) = parse_err("Name is full");
    assert_eq!(at, 8);
    assert!(msg.contains("\"full\""), "{msg}");
    let (at, msg) = parse_err("Name is not full");
    assert_eq!(at, 12);
    assert!(msg.contains("\"full\""), "{msg}");
    let (at, msg) = parse_err("Name not equals x");
    assert_eq!(at, 9);
    assert!(msg.contains("\"equals\""), "{msg}");
    let (at, msg) = parse_err("Name ==");
    assert_eq!(at, 7);
    assert!(msg.contains("end of input"), "{msg}");
    let (at, _) = parse_err("not");
    assert_eq!(at, 3);
    let (at, msg) = parse_err("not (Name == )");
    assert_eq!(at, 13);
    assert!(msg.contains("')'"), "{msg}");
    let (at, msg) = parse_err("== x");
    assert_eq!(at, 0);
    assert!(msg.contains("expected a selector or value"), "{msg}");
}

#[test]
fn parse_error_display_is_consuls() {
    let e = Filter::parse("A == 1 and\n  B =! 2").unwrap_err();
    assert_eq!(
        e,
        FilterError::Parse {
            at: 15,
            line: 2,
            col: 5,
            msg: "expected an operator (==, !=, is empty, is not empty, in, not in, contains, not contains, matches, not matches), found '='".into()
        }
    );
    assert!(e.to_string().starts_with(
        "Failed to create boolean expression evaluator: 2:5 (15): expected an operator"
    ));
}

#[test]
fn unsupported_forms() {
    for expr in [r#""a" in ["a", "b"]"#, "Port < 5", "Port >= 5"] {
        match Filter::parse(expr) {
            Err(FilterError::Unsupported(m)) => {
                assert!(!m.is_empty());
                assert!(FilterError::Unsupported(m)
                    .to_string()
                    .contains("unsupported"));
            }
            other => panic!("{expr}: {other:?}"),
        }
    }
}

#[test]
fn nesting_is_limited() {
    let ok = format!(
        "{}A == 1{}",
        "(".repeat(MAX_NESTING),
        ")".repeat(MAX_NESTING)
    );
    assert!(check(&ok, &json!({"A": 1})));
    let deep = format!(
        "{}A == 1{}",
        "(".repeat(MAX_NESTING + 1),
        ")".repeat(MAX_NESTING + 1)
    );
    let (_, msg) = parse_err(&deep);
    assert!(msg.contains("nests"), "{msg}");
    let nots = format!("{}A == 1", "not ".repeat(10_000));
    assert!(Filter::parse(&nots).is_err());
    let wide = vec!["A == 1"; 10_000].join(" and ");
    assert!(check(&wide, &json!({"A": 1})));
}

// --- The regular-expression engine -----------------------------------------

fn re_match(pattern: &str, text: &str) -> bool {
    Regex::new(pattern)
        .unwrap_or_else(|e| panic!("{pattern:?}: {e}"))
        .is_match(text)
}

#[test]
fn regex_engine() {
    let cases: &[(&str, &str, bool)] = &[
        ("abc", "xxabcxx", true),
        ("^abc", "xabc", false),
        ("abc$", "abcx", false),
        ("^$", "", true),
        ("a.c", "abc", true),
        ("a.c", "a\nc", false),
        ("(?s)a.c", "a\nc", true),
        ("a*", "", true),
        ("^a+$", "aaa", true),
        ("^a+$", "", false),
        ("^ab?c$", "ac", true),
        ("^a{2,3}$", "aaaa", false),
        ("^a{2,3}$", "aaa", true),
        ("^a{2}$", "aa", true),
        ("^a{2,}$", "aaaaa", true),
        ("^a{,2}$", "a{,2}", true),
        ("a{", "a{", true),
        ("^(ab|cd)+$", "abcdab", true),
        ("^(ab|cd)+$", "abc", false),
        ("^(?:a|b)*c$", "ababc", true),
        ("^(?P<x>a)b$", "ab", true),
        ("^[a-c]+$", "abcab", true),
        ("^[^a-c]+$", "xyz", true),
        ("^[^a-c]+$", "xaz", false),
        ("^[]a]+$", "]a]", true),
        ("^[a-]+$", "a-a", true),
        (r"^\d+\.\d+$", "10.25", true),
        (r"^\w+$", "a_1", true),
        (r"^\W$", "-", true),
        (r"\s", "a b", true),
        (r"^\S+$", "ab", true),
        (r"^[\d\s]+$", "1 2", true),
        (r"^[\D]+$", "ab", true),
        (r"^[[:alpha:]]+$", "abZ", true),
        (r"^[[:^digit:]]+$", "ab", true),
        (r"\bfoo\b", "a foo b", true),
        (r"\bfoo\b", "afoob", false),
        (r"\Bfoo", "afoo", true),
        (r"\Aab\z", "ab", true),
        ("(?i)hello", "HeLLo", true),
        ("(?i:h)ello", "Hello", true),
        ("(?i:h)ello", "HELLO", false),
        ("(?i)[a-c]+x", "ABCX", true),
        ("(?m)^b$", "a\nb\nc", true),
        ("^b$", "a\nb\nc", false),
        ("a|b|c", "c", true),
        ("x(a|)y", "xy", true),
        ("(a*)*b", "aaab", true),
        ("(a*)+$", "b", true),
        ("(|a)+b", "ab", true),
        (r"\x41\x{42}", "AB", true),
        (r"\.\*\+\?\(\)\[\]\{\}\|\^\$\\", r".*+?()[]{}|^$\", true),
        ("é+", "ééé", true),
        ("^.$", "é", true),
        ("a*?b+?c??", "abc", true),
        (r"\t\n", "\t\n", true),
    ];
    for &(pattern, text, want) in cases {
        assert_eq!(re_match(pattern, text), want, "{pattern:?} on {text:?}");
    }
}

#[test]
fn regex_errors() {
    for bad in [
        "a(b",
        "a)b",
        "*a",
        "a**",
        "[a",
        "a{1001}",
        "a{3,2}",
        r"\",
        r"a\q",
        "(?z)",
        "[z-a]",
        r"\1",
        "[[:nope:]]",
    ] {
        assert!(
            matches!(Regex::new(bad), Err(RegexError::Syntax(_))),
            "{bad:?}"
        );
    }
    for unsupported in [r"\pL", r"\p{Greek}", r"\PL", r"\Qa\E"] {
        assert!(
            matches!(Regex::new(unsupported), Err(RegexError::Unsupported(_))),
            "{unsupported:?}"
        );
    }
    // Blow-ups are refused, not expanded.
    assert!(Regex::new("((a{1000}){1000}){1000}").is_err());
    assert!(Regex::new(&"(".repeat(1000)).is_err());
}

#[test]
fn regex_is_linear_on_pathological_input() {
    // Exponential for a backtracking matcher.
    let re = Regex::new("^(a+)+$").unwrap();
    let text = format!("{}b", "a".repeat(5_000));
    assert!(!re.is_match(&text));
}

// --- Property tests ---------------------------------------------------------

/// Fragments that random filters are assembled from.
fn arb_selector() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "Name",
        "Port",
        "Weight",
        "Enabled",
        "Tags",
        "Mixed",
        "Nested",
        "Meta",
        "Meta.env",
        "Meta[\"some key\"]",
        "Meta.nope",
        "Nothing",
        "Nothing.x",
        "Sub.Field",
        "Sub.Nope",
        "Items.Kind",
        "Items.0.Kind",
        "Tags.5",
        "Name.x",
        "\"/Meta/env\"",
        "Missing",
    ])
    .prop_map(str::to_string)
}

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a", "true", "false", "8080", "-1.5", "0", "web-1x", "prod"
        ])
        .prop_map(|s| if s.contains('-') && !s.starts_with('-') {
            format!("{s:?}")
        } else {
            s.to_string()
        }),
        "[a-z ]{0,4}".prop_map(|s| format!("{s:?}")),
        "[a-z.^$]{1,3}[*+?]?".prop_map(|s| format!("`{s}`")),
    ]
}

fn arb_filter() -> impl Strategy<Value = String> {
    let leaf = (arb_selector(), arb_value(), 0..10usize).prop_map(|(s, v, op)| match op {
        0 => format!("{s} == {v}"),
        1 => format!("{s} != {v}"),
        2 => format!("{s} is empty"),
        3 => format!("{s} is not empty"),
        4 => format!("{v} in {s}"),
        5 => format!("{v} not in {s}"),
        6 => format!("{s} contains {v}"),
        7 => format!("{s} not contains {v}"),
        8 => format!("{s} matches {v}"),
        _ => format!("{s} not matches {v}"),
    });
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

proptest! {
    #[test]
    fn parse_never_panics_on_any_string(s in ".{0,64}") {
        let _ = Filter::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_filter_like_strings(
        s in r#"[ ()!=\[\]"`.\-0-9a-zA-Z]{0,12}( (and|or|not|in|is|empty|contains|matches) [ ()!=\[\]"`.\-0-9a-zA-Z]{0,12}){0,4}"#
    ) {
        if let Ok(filter) = Filter::parse(&s) {
            let _ = filter.matches(&sample());
        }
    }

    #[test]
    fn random_filters_parse_and_never_panic(expr in arb_filter()) {
        let filter = Filter::parse(&expr);
        prop_assert!(filter.is_ok(), "{expr:?}: {filter:?}");
        if let Ok(filter) = filter {
            let row = sample();
            let first = filter.matches(&row);
            // Deterministic.
            prop_assert_eq!(&first, &filter.matches(&row));
            let _ = filter.matches(&json!({}));
            let _ = filter.matches(&Value::Null);
            let _ = filter.matches(&json!([1, 2]));
        }
    }

    #[test]
    fn not_negates(expr in arb_filter()) {
        let row = sample();
        let plain = f(&expr).matches(&row);
        let negated = f(&format!("not ({expr})")).matches(&row);
        match (plain, negated) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, !b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
        }
    }

    #[test]
    fn regex_never_panics(pattern in r"[a-c()|*+?{}\[\]^$.\\0-9,:dwsbpQ-]{0,16}", text in "[a-c\n ]{0,16}") {
        if let Ok(re) = Regex::new(&pattern) {
            let _ = re.is_match(&text);
        }
    }
}
