//! The options of `#[check(...)]`: parsed (syntax) by a `syn::parse::Parse`
//! impl, then validated (duplicates, conflicts, duration literals) into
//! [`CheckOptions`], reporting every problem at once.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitStr, Token, bracketed};

use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(on);
    syn::custom_keyword!(strategy);
    syn::custom_keyword!(delay);
    syn::custom_keyword!(immediate);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(escalate);
}

/// Every option, as the error for an unknown one lists them.
const VALID_OPTIONS: &str = "`name = \"...\"`, `on = [\"model\", ...]`, `strategy = <expr>`, \
                             `delay = \"10m\"`, `immediate`, `timeout = \"5s\"`, `escalate = name`";

/// What a duration literal looks like, for error messages.
const DURATION_FORMS: &str = "a duration like \"500ms\", \"5s\", \"10m\", \"1h\" or \"1h30m\"";

/// One option as written, before validation.
pub(crate) enum RawOption {
    /// `name = "..."`.
    Name(kw::name, LitStr),
    /// `on = ["a", "b"]` (or `on = "a"`).
    On(kw::on, Vec<LitStr>, Span),
    /// `strategy = <expr>`.
    Strategy(kw::strategy, Box<Expr>),
    /// `delay = "10m"`.
    Delay(kw::delay, LitStr),
    /// `immediate`.
    Immediate(kw::immediate),
    /// `timeout = "5s"`.
    Timeout(kw::timeout, LitStr),
    /// `escalate = pagerduty` or `escalate = "pagerduty"`.
    Escalate(kw::escalate, LitStr),
}

impl RawOption {
    /// The option's name as written.
    fn key(&self) -> &'static str {
        match self {
            RawOption::Name(..) => "name",
            RawOption::On(..) => "on",
            RawOption::Strategy(..) => "strategy",
            RawOption::Delay(..) => "delay",
            RawOption::Immediate(..) => "immediate",
            RawOption::Timeout(..) => "timeout",
            RawOption::Escalate(..) => "escalate",
        }
    }

    /// The span of the option's name.
    fn key_span(&self) -> Span {
        match self {
            RawOption::Name(k, _) => k.span,
            RawOption::On(k, ..) => k.span,
            RawOption::Strategy(k, _) => k.span,
            RawOption::Delay(k, _) => k.span,
            RawOption::Immediate(k) => k.span,
            RawOption::Timeout(k, _) => k.span,
            RawOption::Escalate(k, _) => k.span,
        }
    }
}

/// A string literal value, or an error naming the option and an example.
fn string_value(input: ParseStream<'_>, option: &str, example: &str) -> syn::Result<LitStr> {
    if input.peek(LitStr) {
        return input.parse();
    }
    if input.peek(syn::LitInt) || input.peek(syn::LitFloat) {
        let lit: syn::Lit = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`{option}` takes a string literal: write `{option} = \"{}\"`",
                lit.to_token_stream()
            ),
        ));
    }
    Err(input.error(format!(
        "`{option}` takes a string literal, e.g. `{option} = {example}`"
    )))
}

impl Parse for RawOption {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::name) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(RawOption::Name(
                key,
                string_value(input, "name", "\"transfers_have_payments\"")?,
            ))
        } else if lookahead.peek(kw::on) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            if input.peek(LitStr) {
                let model: LitStr = input.parse()?;
                let span = model.span();
                return Ok(RawOption::On(key, vec![model], span));
            }
            if !input.peek(syn::token::Bracket) {
                return Err(input.error("`on` takes a list of model names, e.g. `on = [\"transfers\"]`"));
            }
            let content;
            let brackets = bracketed!(content in input);
            let models = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
            Ok(RawOption::On(
                key,
                models.into_iter().collect(),
                brackets.span.join(),
            ))
        } else if lookahead.peek(kw::strategy) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(RawOption::Strategy(key, Box::new(input.parse()?)))
        } else if lookahead.peek(kw::delay) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(RawOption::Delay(key, string_value(input, "delay", "\"10m\"")?))
        } else if lookahead.peek(kw::immediate) {
            Ok(RawOption::Immediate(input.parse()?))
        } else if lookahead.peek(kw::timeout) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(RawOption::Timeout(key, string_value(input, "timeout", "\"5s\"")?))
        } else if lookahead.peek(kw::escalate) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            if input.peek(Ident) {
                let ident: Ident = input.parse()?;
                return Ok(RawOption::Escalate(
                    key,
                    LitStr::new(&ident.to_string(), ident.span()),
                ));
            }
            Ok(RawOption::Escalate(
                key,
                string_value(input, "escalate", "pagerduty")?,
            ))
        } else if input.peek(Ident) {
            let unknown: Ident = input.parse()?;
            Err(syn::Error::new(
                unknown.span(),
                format!("unknown option `{unknown}` of #[check]; valid options are {VALID_OPTIONS}"),
            ))
        } else {
            Err(lookahead.error())
        }
    }
}

/// The options as written: `#[check(opt, opt = value, ...)]`.
pub(crate) struct RawOptions(Vec<RawOption>);

impl Parse for RawOptions {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let options = Punctuated::<RawOption, Token![,]>::parse_terminated(input)?;
        Ok(RawOptions(options.into_iter().collect()))
    }
}

/// How the check is scheduled, if not the default.
pub(crate) enum Strategy {
    /// `strategy = <expr>`.
    Expr(Box<Expr>),
    /// `delay = "..."`.
    Delay(Duration, Span),
    /// `immediate`.
    Immediate(Span),
}

/// The validated options of one `#[check]`.
#[derive(Default)]
pub(crate) struct CheckOptions {
    /// `name = "..."`.
    pub(crate) name: Option<LitStr>,
    /// `on = [...]`.
    pub(crate) on: Option<Vec<LitStr>>,
    /// `strategy`, `delay` or `immediate`.
    pub(crate) strategy: Option<Strategy>,
    /// `timeout = "..."`, with the literal's span.
    pub(crate) timeout: Option<(Duration, Span)>,
    /// `escalate = ...`.
    pub(crate) escalate: Option<LitStr>,
}

/// Parses a duration literal at compile time.
fn duration(lit: &LitStr) -> syn::Result<Duration> {
    let text = lit.value();
    humantime::parse_duration(text.trim()).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!("invalid duration {text:?} ({e}); expected {DURATION_FORMS}"),
        )
    })
}

/// A `Duration` expression with the exact value.
pub(crate) fn duration_tokens(d: Duration, span: Span) -> TokenStream {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    quote_spanned!(span=> ::core::time::Duration::new(#secs, #nanos))
}

impl CheckOptions {
    /// Validates the options: each at most once, one strategy, valid
    /// durations and names. Every problem is reported.
    pub(crate) fn validate(raw: RawOptions) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let mut out = CheckOptions::default();
        let mut seen: Vec<&'static str> = Vec::new();
        let mut strategy_key: Option<&'static str> = None;
        for option in raw.0 {
            let key = option.key();
            if seen.contains(&key) {
                errors.push(syn::Error::new(
                    option.key_span(),
                    format!("duplicate option `{key}`: each option of #[check] may be given once"),
                ));
                continue;
            }
            seen.push(key);
            if matches!(key, "strategy" | "delay" | "immediate") {
                if let Some(first) = strategy_key {
                    errors.push(syn::Error::new(
                        option.key_span(),
                        format!(
                            "`{key}` conflicts with `{first}`: a check has one execution strategy; \
                             give one of `strategy = <expr>`, `delay = \"...\"` or `immediate`"
                        ),
                    ));
                    continue;
                }
                strategy_key = Some(key);
            }
            match option {
                RawOption::Name(_, name) => {
                    if name.value().trim().is_empty() {
                        errors.push(syn::Error::new(name.span(), "a check's name must not be empty"));
                    }
                    out.name = Some(name);
                }
                RawOption::On(_, models, span) => {
                    if models.is_empty() {
                        errors.push(syn::Error::new(
                            span,
                            "`on` needs at least one model, e.g. `on = [\"transfers\"]`; \
                             leave it out to trigger on every model the view reads",
                        ));
                    }
                    for model in &models {
                        if model.value().is_empty() {
                            errors.push(syn::Error::new(model.span(), "a model name must not be empty"));
                        }
                    }
                    out.on = Some(models);
                }
                RawOption::Strategy(_, expr) => out.strategy = Some(Strategy::Expr(expr)),
                RawOption::Delay(_, lit) => {
                    if let Some(d) = errors.ok(duration(&lit)) {
                        out.strategy = Some(Strategy::Delay(d, lit.span()));
                    }
                }
                RawOption::Immediate(key) => out.strategy = Some(Strategy::Immediate(key.span)),
                RawOption::Timeout(_, lit) => match errors.ok(duration(&lit)) {
                    Some(d) if d.is_zero() => errors.push(syn::Error::new(
                        lit.span(),
                        format!("a timeout must be longer than zero; expected {DURATION_FORMS}"),
                    )),
                    Some(d) => out.timeout = Some((d, lit.span())),
                    None => {}
                },
                RawOption::Escalate(_, name) => {
                    if name.value().trim().is_empty() {
                        errors.push(syn::Error::new(
                            name.span(),
                            "an escalation name must not be empty",
                        ));
                    }
                    out.escalate = Some(name);
                }
            }
        }
        errors.finish().map(|()| out)
    }

    /// The builder calls that apply these options to a `Check`, in a fixed
    /// order.
    pub(crate) fn builder_calls(&self) -> TokenStream {
        let mut calls = TokenStream::new();
        if let Some(models) = &self.on {
            calls.extend(quote!(.on(&[#(#models),*])));
        }
        match &self.strategy {
            None => {}
            Some(Strategy::Expr(expr)) => {
                calls.extend(quote_spanned!(expr.span()=> .with_strategy(#expr)));
            }
            Some(Strategy::Delay(d, span)) => {
                let d = duration_tokens(*d, *span);
                calls.extend(
                    quote_spanned!(*span=> .with_strategy(::overseer_core::strategy::FixedDelay(#d))),
                );
            }
            Some(Strategy::Immediate(span)) => {
                calls.extend(quote_spanned!(*span=> .with_strategy(::overseer_core::strategy::Immediate)));
            }
        }
        if let Some((d, span)) = &self.timeout {
            let d = duration_tokens(*d, *span);
            calls.extend(quote!(.with_timeout(#d)));
        }
        if let Some(name) = &self.escalate {
            calls.extend(quote!(.escalate_to(#name)));
        }
        calls
    }
}
