//! UTC calendar text from seconds since the Unix epoch, for the log lines
//! ([`crate::logs`]) and the admin console's times ([`crate::admin`]).

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the Unix epoch, UTC.
pub fn date_time(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    text
}

/// (year, month, day) of a day counted from 1970-01-01, in the proleptic
/// Gregorian calendar: days are counted from 0000-03-01 so that the leap
/// day ends each 4-, 100- and 400-year cycle.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let days = days + 719_468; // 0000-03-01 to 1970-01-01
    let era = days / 146_097; // 400-year cycles
    let of_era = days % 146_097;
    let year_of_era = (of_era - of_era / 1460 + of_era / 36_524 - of_era / 146_096) / 365;
    let of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * of_year + 2) / 153;
    let day = of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times() {
        let text = |secs| String::from_utf8(date_time(secs).to_vec()).unwrap();
        assert_eq!(text(0), "1970-01-01T00:00:00");
        assert_eq!(text(951_868_799), "2000-02-29T23:59:59");
        assert_eq!(text(4_107_542_400), "2100-03-01T00:00:00");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let mut last = civil_date(0);
        assert_eq!(last, (1970, 1, 1));
        for days in 1..200_000 {
            let (y, m, d) = civil_date(days);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_days = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            let next = if last.2 < month_days[last.1 as usize - 1] {
                (last.0, last.1, last.2 + 1)
            } else if last.1 < 12 {
                (last.0, last.1 + 1, 1)
            } else {
                (last.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), next, "day {days}");
            last = (y, m, d);
        }
    }
}
