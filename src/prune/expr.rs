//! Metric expressions: a pruning score written as a formula over the layer's weights and
//! calibration statistics (`abs(W) * X`), parsed and shape-checked when the command line or
//! config is read, evaluated with libtorch operations on the run's device.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use tch::{Kind, Tensor};

use super::mask::Group;
use super::metric::Metric;
use super::stats::{LayerStats, Needs};
use crate::model::weights::all_finite;

/// A variable an expression may read, with its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    /// The weights, [out, in].
    W,
    /// Wanda's activation norm sqrt(scaler_row), [1, in].
    X,
    /// The diagonal of SparseGPT's input Hessian 2/n Σ x xᵀ, [1, in].
    Hdiag,
    /// The diagonal of the upper Cholesky factor of SparseGPT's damped H⁻¹, [1, in].
    Hinv,
}

const VARIABLES: [(&str, Var, &str); 4] = [
    ("W", Var::W, "the weights [out, in]"),
    ("X", Var::X, "input activation norms, Wanda's sqrt(scaler_row) [1, in]"),
    ("Hdiag", Var::Hdiag, "diagonal of the input Hessian 2/n Σ x xᵀ [1, in]"),
    (
        "Hinv",
        Var::Hinv,
        "diagonal of the Cholesky factor of SparseGPT's damped inverse Hessian [1, in]",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Abs,
    Sqrt,
    Log,
    Exp,
    Min,
    Max,
    Rowsum,
    Colsum,
    Mean,
}

const FUNCTIONS: [(&str, Func, usize); 9] = [
    ("abs", Func::Abs, 1),
    ("sqrt", Func::Sqrt, 1),
    ("log", Func::Log, 1),
    ("exp", Func::Exp, 1),
    ("min", Func::Min, 2),
    ("max", Func::Max, 2),
    ("rowsum", Func::Rowsum, 1),
    ("colsum", Func::Colsum, 1),
    ("mean", Func::Mean, 1),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Clone, Debug)]
enum Node {
    Num(f64),
    Var(Var),
    Param(String),
    Neg(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// Which of the two dimensions of [out, in] a value spans (false: size 1, broadcast). Dimensions
/// never swap (there is no transpose), so any two shapes broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    rows: bool,
    cols: bool,
}

impl Shape {
    fn join(self, o: Shape) -> Shape {
        Shape {
            rows: self.rows || o.rows,
            cols: self.cols || o.cols,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |full: bool, name: &str| if full { name.to_string() } else { "1".into() };
        write!(f, "[{}, {}]", d(self.rows, "out"), d(self.cols, "in"))
    }
}

/// A parsed, shape-checked expression with its parameter values.
#[derive(Clone, Debug)]
pub struct Expression {
    text: String,
    root: Node,
    params: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Num(f64),
    Ident(String),
    Sym(char),
    End,
}

/// The "what may appear here" part of every error message.
fn vocabulary(params: &BTreeMap<String, f64>) -> String {
    let vars: Vec<String> = VARIABLES.iter().map(|(n, _, what)| format!("{n} ({what})")).collect();
    let funcs: Vec<&str> = FUNCTIONS.iter().map(|(n, _, _)| *n).collect();
    let declared = if params.is_empty() {
        "none declared (--param NAME=VALUE, or `params:` in a config)".to_string()
    } else {
        params.keys().cloned().collect::<Vec<_>>().join(", ")
    };
    format!(
        "variables: {}; functions: {}; operators: + - * / ^; parameters: {declared}",
        vars.join(", "),
        funcs.join(", ")
    )
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(Token, usize)>,
    pos: usize,
    params: &'a BTreeMap<String, f64>,
}

impl<'a> Parser<'a> {
    fn error(&self, column: usize, msg: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "metric expression `{}`, column {column}: {msg}\n  {}\n  {}^\n{}",
            self.text,
            self.text,
            " ".repeat(column.saturating_sub(1)),
            vocabulary(self.params)
        )
    }

    fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, (usize, String)> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let column = i + 1;
            if c.is_whitespace() {
                i += 1;
            } else if c.is_ascii_digit() || c == '.' {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                // Exponent notation: 1e-3, 2.5E4.
                if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                    let mut j = i + 1;
                    if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                        j += 1;
                    }
                    if j < chars.len() && chars[j].is_ascii_digit() {
                        i = j;
                        while i < chars.len() && chars[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                let s: String = chars[start..i].iter().collect();
                let n = s
                    .parse::<f64>()
                    .map_err(|_| (column, format!("`{s}` is not a number")))?;
                out.push((Token::Num(n), column));
            } else if c.is_alphabetic() || c == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((Token::Ident(chars[start..i].iter().collect()), column));
            } else if "+-*/^(),".contains(c) {
                out.push((Token::Sym(c), column));
                i += 1;
            } else {
                return Err((column, format!("unexpected character `{c}`")));
            }
        }
        out.push((Token::End, chars.len() + 1));
        Ok(out)
    }

    fn peek(&self) -> &(Token, usize) {
        &self.tokens[self.pos]
    }

    fn next(&mut self) -> (Token, usize) {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, sym: char) -> Result<()> {
        match self.next() {
            (Token::Sym(c), _) if c == sym => Ok(()),
            (t, col) => Err(self.error(col, &format!("expected `{sym}`, found {}", describe(&t)))),
        }
    }

    fn sum(&mut self) -> Result<Node> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek().0 {
                Token::Sym('+') => Op::Add,
                Token::Sym('-') => Op::Sub,
                _ => return Ok(left),
            };
            self.next();
            left = Node::Bin(op, Box::new(left), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Node> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().0 {
                Token::Sym('*') => Op::Mul,
                Token::Sym('/') => Op::Div,
                _ => return Ok(left),
            };
            self.next();
            left = Node::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    /// Unary minus binds looser than `^` (as in Python: -X^2 is -(X^2)).
    fn unary(&mut self) -> Result<Node> {
        if self.peek().0 == Token::Sym('-') {
            self.next();
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        self.power()
    }

    /// `^` is right-associative and its exponent may be negated (X^-1).
    fn power(&mut self) -> Result<Node> {
        let base = self.atom()?;
        if self.peek().0 == Token::Sym('^') {
            self.next();
            return Ok(Node::Bin(Op::Pow, Box::new(base), Box::new(self.unary()?)));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Node> {
        let (token, column) = self.next();
        match token {
            Token::Num(n) => Ok(Node::Num(n)),
            Token::Sym('(') => {
                let inner = self.sum()?;
                self.expect(')')?;
                Ok(inner)
            }
            Token::Ident(name) => {
                if let Some((_, func, arity)) = FUNCTIONS.iter().find(|(n, _, _)| *n == name) {
                    if self.peek().0 != Token::Sym('(') {
                        let col = self.peek().1;
                        return Err(self.error(col, &format!("`{name}` is a function: write {name}(...)")));
                    }
                    self.next();
                    let mut args = vec![self.sum()?];
                    while self.peek().0 == Token::Sym(',') {
                        self.next();
                        args.push(self.sum()?);
                    }
                    if args.len() != *arity {
                        return Err(self.error(
                            column,
                            &format!("`{name}` takes {arity} argument(s), got {}", args.len()),
                        ));
                    }
                    self.expect(')')?;
                    return Ok(Node::Call(*func, args));
                }
                if let Some((_, var, _)) = VARIABLES.iter().find(|(n, _, _)| *n == name) {
                    return Ok(Node::Var(*var));
                }
                if self.params.contains_key(&name) {
                    return Ok(Node::Param(name));
                }
                Err(self.error(column, &format!("unknown name `{name}`")))
            }
            t => Err(self.error(
                column,
                &format!(
                    "expected a number, variable, parameter, function or `(`, found {}",
                    describe(&t)
                ),
            )),
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Num(n) => format!("the number {n}"),
        Token::Ident(s) => format!("`{s}`"),
        Token::Sym(c) => format!("`{c}`"),
        Token::End => "the end of the expression".into(),
    }
}

fn shape(node: &Node) -> Shape {
    let scalar = Shape {
        rows: false,
        cols: false,
    };
    match node {
        Node::Num(_) | Node::Param(_) => scalar,
        Node::Var(Var::W) => Shape { rows: true, cols: true },
        Node::Var(_) => Shape {
            rows: false,
            cols: true,
        },
        Node::Neg(a) => shape(a),
        Node::Bin(_, a, b) => shape(a).join(shape(b)),
        Node::Call(Func::Rowsum, a) => Shape {
            rows: shape(&a[0]).rows,
            cols: false,
        },
        Node::Call(Func::Colsum, a) => Shape {
            rows: false,
            cols: shape(&a[0]).cols,
        },
        Node::Call(Func::Mean, _) => scalar,
        Node::Call(_, args) => args.iter().map(shape).fold(scalar, Shape::join),
    }
}

fn visit_vars(node: &Node, f: &mut dyn FnMut(Var)) {
    match node {
        Node::Var(v) => f(*v),
        Node::Neg(a) => visit_vars(a, f),
        Node::Bin(_, a, b) => {
            visit_vars(a, f);
            visit_vars(b, f);
        }
        Node::Call(_, args) => args.iter().for_each(|a| visit_vars(a, f)),
        Node::Num(_) | Node::Param(_) => {}
    }
}

fn mentions_param(node: &Node, name: &str) -> bool {
    match node {
        Node::Param(p) => p == name,
        Node::Neg(a) => mentions_param(a, name),
        Node::Bin(_, a, b) => mentions_param(a, name) || mentions_param(b, name),
        Node::Call(_, args) => args.iter().any(|a| mentions_param(a, name)),
        Node::Num(_) | Node::Var(_) => false,
    }
}

/// A value during evaluation: numbers stay f64 until they meet a tensor.
enum Val {
    Num(f64),
    T(Tensor),
}

impl Expression {
    /// Parses `text` with the declared parameters and checks that it gives one score per weight.
    pub fn parse(text: &str, params: &BTreeMap<String, f64>) -> Result<Expression> {
        let tokens = Parser::tokenize(text).map_err(|(column, msg)| {
            Parser {
                text,
                tokens: Vec::new(),
                pos: 0,
                params,
            }
            .error(column, &msg)
        })?;
        let mut p = Parser {
            text,
            tokens,
            pos: 0,
            params,
        };
        let root = p.sum()?;
        let (rest, column) = p.peek().clone();
        if rest != Token::End {
            return Err(p.error(
                column,
                &format!(
                    "expected an operator or the end of the expression, found {}",
                    describe(&rest)
                ),
            ));
        }
        let s = shape(&root);
        if s != (Shape { rows: true, cols: true }) {
            bail!(
                "metric expression `{text}` gives a value of shape {s}, but a score needs one value per weight, [out, in]: \
                 combine it with W (e.g. abs(W) * X)"
            );
        }
        if let Some(unused) = params.keys().find(|k| !mentions_param(&root, k)) {
            bail!(
                "parameter `{unused}` is declared but metric expression `{text}` does not use it; remove it or use it"
            );
        }
        if let Some(clash) = params
            .keys()
            .find(|k| VARIABLES.iter().any(|(n, _, _)| n == k) || FUNCTIONS.iter().any(|(n, _, _)| n == k))
        {
            bail!("parameter `{clash}` has the name of a variable or function; rename it");
        }
        Ok(Expression {
            text: text.to_string(),
            root,
            params: params.clone(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The calibration statistics the variables it mentions need.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs::NONE;
        visit_vars(&self.root, &mut |v| match v {
            Var::W => {}
            Var::X => needs.norms = true,
            Var::Hdiag | Var::Hinv => needs.hessian = true,
        });
        needs
    }

    /// The value of `node` given the layer's variables (each computed once: `Hinv` costs a
    /// Cholesky factorisation).
    fn eval(&self, node: &Node, vars: &[(Var, Tensor)]) -> Result<Val> {
        let device = vars.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let scalar = |x: f64| Tensor::scalar_tensor(x, (Kind::Float, device));
        let tensor = |v: Val| match v {
            Val::T(t) => t,
            Val::Num(x) => scalar(x),
        };
        Ok(match node {
            Node::Num(n) => Val::Num(*n),
            Node::Param(p) => Val::Num(self.params[p]),
            Node::Var(v) => Val::T(
                vars.iter()
                    .find(|(x, _)| x == v)
                    .expect("every mentioned variable is computed")
                    .1
                    .shallow_clone(),
            ),
            Node::Neg(a) => match self.eval(a, vars)? {
                Val::Num(x) => Val::Num(-x),
                Val::T(t) => Val::T(-t),
            },
            Node::Bin(op, a, b) => match (self.eval(a, vars)?, self.eval(b, vars)?) {
                (Val::Num(x), Val::Num(y)) => Val::Num(match op {
                    Op::Add => x + y,
                    Op::Sub => x - y,
                    Op::Mul => x * y,
                    Op::Div => x / y,
                    Op::Pow => x.powf(y),
                }),
                // A number exponent as Python's `t ** 2` (pow with a scalar), which the built-in metrics use.
                (Val::T(t), Val::Num(y)) if *op == Op::Pow => Val::T(t.pow_tensor_scalar(y)),
                (x, y) => {
                    let (x, y) = (tensor(x), tensor(y));
                    Val::T(match op {
                        Op::Add => x + y,
                        Op::Sub => x - y,
                        Op::Mul => x * y,
                        Op::Div => x / y,
                        Op::Pow => x.pow(&y),
                    })
                }
            },
            Node::Call(func, args) => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.eval(a, vars)?);
                }
                let mut vals = vals.into_iter();
                let a = vals.next().expect("arity is checked when parsing");
                match (func, a) {
                    (Func::Min | Func::Max, a) => {
                        let b = vals.next().expect("arity is checked when parsing");
                        match (a, b) {
                            (Val::Num(x), Val::Num(y)) => {
                                Val::Num(if *func == Func::Min { x.min(y) } else { x.max(y) })
                            }
                            (a, b) if *func == Func::Min => Val::T(tensor(a).minimum(&tensor(b))),
                            (a, b) => Val::T(tensor(a).maximum(&tensor(b))),
                        }
                    }
                    (Func::Abs, Val::Num(x)) => Val::Num(x.abs()),
                    (Func::Sqrt, Val::Num(x)) => Val::Num(x.sqrt()),
                    (Func::Log, Val::Num(x)) => Val::Num(x.ln()),
                    (Func::Exp, Val::Num(x)) => Val::Num(x.exp()),
                    (Func::Rowsum | Func::Colsum | Func::Mean, Val::Num(x)) => Val::Num(x),
                    (Func::Abs, Val::T(t)) => Val::T(t.abs()),
                    (Func::Sqrt, Val::T(t)) => Val::T(t.sqrt()),
                    (Func::Log, Val::T(t)) => Val::T(t.log()),
                    (Func::Exp, Val::T(t)) => Val::T(t.exp()),
                    (Func::Rowsum, Val::T(t)) => Val::T(t.sum_dim_intlist(1, true, Kind::Float)),
                    (Func::Colsum, Val::T(t)) => Val::T(t.sum_dim_intlist(0, true, Kind::Float)),
                    (Func::Mean, Val::T(t)) => Val::T(t.mean(Kind::Float)),
                }
            }
        })
    }
}

/// One variable's value for this layer, in f32 on the weights' device.
fn variable(v: Var, w: &Tensor, stats: &LayerStats) -> Result<Tensor> {
    let missing = |what: &str| anyhow::anyhow!("the expression reads {what}, which was not collected");
    Ok(match v {
        Var::W => w.to_kind(Kind::Float),
        Var::X => stats
            .norms
            .ok_or_else(|| missing("X"))?
            .scaler_row
            .sqrt()
            .reshape([1, -1]),
        Var::Hdiag => stats
            .hessian
            .ok_or_else(|| missing("Hdiag"))?
            .diagonal(0, 0, 1)
            .reshape([1, -1]),
        Var::Hinv => match stats.hinv_diag {
            Some(d) => d.reshape([1, -1]),
            None => super::sparsegpt::inverse_hessian_diagonal(stats.hessian.ok_or_else(|| missing("Hinv"))?)?
                .reshape([1, -1]),
        },
    })
}

/// A metric given as an expression: its name (or the expression itself) and its comparison group.
pub struct ExpressionMetric {
    pub name: String,
    pub expression: Expression,
}

impl ExpressionMetric {
    pub fn shared(name: &str, expression: Expression) -> Arc<dyn Metric> {
        Arc::new(ExpressionMetric {
            name: name.to_string(),
            expression,
        })
    }
}

impl Metric for ExpressionMetric {
    fn name(&self) -> &str {
        &self.name
    }
    fn needs(&self) -> Needs {
        self.expression.needs()
    }
    /// Wanda's per-output group unless one is given: the per-layer threshold of magnitude pruning
    /// suits few metrics that read activations.
    fn default_group(&self) -> Group {
        Group::PerOutput
    }
    fn score(&self, w: &Tensor, stats: &LayerStats) -> Result<Tensor> {
        let mut mentioned = Vec::new();
        visit_vars(&self.expression.root, &mut |v| {
            if !mentioned.contains(&v) {
                mentioned.push(v)
            }
        });
        let vars = mentioned
            .into_iter()
            .map(|v| Ok((v, variable(v, w, stats)?)))
            .collect::<Result<Vec<_>>>()?;
        let score = match self.expression.eval(&self.expression.root, &vars)? {
            Val::T(t) => t.broadcast_to(w.size()),
            Val::Num(_) => unreachable!("the shape check rejects expressions without W"),
        };
        if !all_finite(&score) {
            bail!(
                "metric `{}` ({}) gives non-finite scores (NaN or ±inf: log of 0, division by 0, or a negative root?); \
                 guard the expression, e.g. log(x + 1e-8) or x / (y + 1e-8)",
                self.name,
                self.expression.text
            );
        }
        Ok(score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Expression::parse(text, &BTreeMap::from([("a".to_string(), 0.5)]))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_point_at_the_column_and_list_the_vocabulary() {
        let e = err("abs(W * ^ X) * a");
        assert!(e.contains("column 9:"), "{e}");
        assert!(e.contains("found `^`"), "{e}");
        assert!(
            e.contains("variables: W (") && e.contains("Hinv (") && e.contains("parameters: a"),
            "{e}"
        );
        assert!(err("abs(Y) * a").contains("column 5: unknown name `Y`"));
        assert!(err("(W * a").contains("column 7: expected `)`, found the end"));
        assert!(err("min(W) * a").contains("`min` takes 2 argument(s), got 1"));
        assert!(err("W $ a").contains("column 3: unexpected character `$`"));
        assert!(err("X * a").contains("shape [1, in]"));
        assert!(err("rowsum(W) * a").contains("shape [out, 1]"));
        assert!(err("abs(W)").contains("parameter `a` is declared but"));
    }

    #[test]
    fn precedence_and_shapes_follow_python() {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0, -4.0]).view([2, 2]);
        let stats = LayerStats::default();
        let eval = |text: &str| {
            let e = Expression::parse(text, &BTreeMap::new()).unwrap();
            Vec::<f32>::try_from(
                ExpressionMetric::shared("t", e)
                    .score(&w, &stats)
                    .unwrap()
                    .flatten(0, -1),
            )
            .unwrap()
        };
        assert_eq!(eval("-W^2"), vec![-1.0, -4.0, -9.0, -16.0]);
        assert_eq!(eval("2^3^0 * W"), vec![2.0, -4.0, 6.0, -8.0]);
        assert_eq!(eval("W - 1 - 1"), vec![-1.0, -4.0, 1.0, -6.0]);
        assert_eq!(eval("rowsum(abs(W)) + 0 * W"), vec![3.0, 3.0, 7.0, 7.0]);
        assert_eq!(eval("colsum(abs(W)) + 0 * W"), vec![4.0, 6.0, 4.0, 6.0]);
        assert_eq!(eval("W / mean(abs(W))"), vec![0.4, -0.8, 1.2, -1.6]);
        assert_eq!(
            eval("max(W, 0) + min(W, -3) + 1e0 * 0 * W"),
            vec![-2.0, -3.0, 0.0, -4.0]
        );
        let e = Expression::parse("log(W)", &BTreeMap::new()).unwrap();
        let msg = ExpressionMetric::shared("logw", e)
            .score(&w, &stats)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("metric `logw` (log(W)) gives non-finite scores"), "{msg}");
    }

    #[test]
    fn only_mentioned_statistics_are_needed() {
        let needs = |t: &str| Expression::parse(t, &BTreeMap::new()).unwrap().needs();
        assert_eq!(needs("abs(W)"), Needs::NONE);
        assert_eq!(
            needs("abs(W) * X"),
            Needs {
                norms: true,
                hessian: false
            }
        );
        assert_eq!(
            needs("W^2 / Hinv^2"),
            Needs {
                norms: false,
                hessian: true
            }
        );
        assert_eq!(
            needs("W * Hdiag * X"),
            Needs {
                norms: true,
                hessian: true
            }
        );
    }
}
