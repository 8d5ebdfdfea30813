//! `sluice group reset-offsets` and `sluice group delete` (issue 15):
//! moves an inactive group's committed offsets on a topic (with
//! `--dry-run` only shows the plan), or deletes the group.

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use sluice_client::{Admin, OffsetReset, OffsetResetPlan};

/// `group reset-offsets GROUP --topic T` and exactly one target.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(
    ["to_earliest", "to_latest", "to_offset", "to_time", "shift_by"]
)))]
pub struct ResetOffsetsArgs {
    pub group: String,
    /// The topic whose partitions are reset (all of them).
    #[arg(long)]
    pub topic: String,
    /// To each partition's first retained offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// To each partition's end (skip everything not yet consumed).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset on every partition (refused where it is outside the log).
    #[arg(long)]
    pub to_offset: Option<u64>,
    /// To the first record at or after this time, RFC 3339 (`2026-12-07T10:00:00Z`).
    #[arg(long)]
    pub to_time: Option<String>,
    /// Move the committed offsets by N records (negative: back), kept within the log.
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Show the plan without committing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// The reset the flags ask for.
fn reset_of(args: &ResetOffsetsArgs) -> Result<OffsetReset> {
    Ok(if args.to_earliest {
        OffsetReset::Earliest
    } else if args.to_latest {
        OffsetReset::Latest
    } else if let Some(offset) = args.to_offset {
        OffsetReset::Offset(offset)
    } else if let Some(time) = &args.to_time {
        OffsetReset::Time(parse_rfc3339_ms(time)?)
    } else if let Some(by) = args.shift_by {
        OffsetReset::ShiftBy(by)
    } else {
        bail!("give one of --to-earliest, --to-latest, --to-offset, --to-time, --shift-by")
    })
}

/// Unix milliseconds of an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS`, optional
/// fraction, then `Z` or `±HH:MM`.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64> {
    let bad = || format!("{text:?} is not an RFC 3339 time such as 2026-12-07T10:00:00Z");
    let bytes = text.as_bytes();
    // ASCII only, so every index below is a character boundary.
    if !text.is_ascii() || bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') {
        bail!(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64> {
        let part = text.get(range).with_context(bad)?;
        if part.is_empty() || !part.bytes().all(|byte| byte.is_ascii_digit()) {
            bail!(bad());
        }
        part.parse::<i64>().with_context(bad)
    };
    if bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' || bytes[16] != b':' {
        bail!(bad());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        bail!(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            bail!(bad());
        }
        let first_three = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = first_three.parse::<i64>().with_context(bad)?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hours = rest[1..3].parse::<i64>().with_context(bad)?;
            let minutes = rest[4..6].parse::<i64>().with_context(bad)?;
            if hours > 23 || minutes > 59 {
                bail!(bad());
            }
            sign * (hours * 60 + minutes)
        }
        _ => bail!(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn print_plan(plan: &OffsetResetPlan) {
    let verb = if plan.applied {
        "reset"
    } else {
        "would reset (dry run)"
    };
    println!("group {} {verb} on topic {}:", plan.group, plan.topic);
    println!("PARTITION  CURRENT  NEW  LOG-START  END");
    for partition in &plan.partitions {
        let current = partition
            .current
            .map_or_else(|| "-".to_string(), |offset| offset.to_string());
        println!(
            "{}  {current}  {}  {}  {}",
            partition.partition,
            partition.target,
            partition.log_start_offset,
            partition.high_watermark
        );
    }
}

/// `sluice group reset-offsets`.
pub async fn reset_offsets(admin: &Admin, args: ResetOffsetsArgs) -> Result<()> {
    let reset = reset_of(&args)?;
    let plan = admin
        .reset_group_offsets(&args.group, &args.topic, reset, args.dry_run)
        .await
        .with_context(|| format!("resetting the offsets of group {:?}", args.group))?;
    print_plan(&plan);
    Ok(())
}

/// `sluice group delete`.
pub async fn delete(admin: &Admin, group: &str) -> Result<()> {
    admin
        .delete_group(group)
        .await
        .with_context(|| format!("deleting group {group:?}"))?;
    println!("deleted group {group}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_ms("2026-12-07T10:00:00Z").unwrap(),
            1_796_637_600_000
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-07T11:00:00.5+01:00").unwrap(),
            1_796_637_600_500
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00.123456-00:30").unwrap(),
            951_784_200_123
        );
        for bad in [
            "",
            "yesterday",
            "2026-12-07",
            "2026-13-07T10:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T10:00:00",
            "2026-12-07T10:00:00+1:00",
            "2026-12-07T10:00:00.Z",
            "２026-12-07T10:00:00Z",
            "2026-12-07T10:00:00+0é00",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad:?} accepted");
        }
    }
}
