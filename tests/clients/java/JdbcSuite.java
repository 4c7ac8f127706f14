// PgJDBC against pgdyno (or PostgreSQL directly): CLIENTS threads, each with its
// own Connection, in phases:
//   threshold-1    prepareThreshold=1: every PreparedStatement is a named
//                  server-side statement (S_n) from its first execution
//   threshold-neg1 prepareThreshold=-1: named from the start, binary transfer
//   small-cache    prepareThreshold=1, preparedStatementCacheQueries=3: closed
//                  statements fall out of the driver's cache and are Closed
// Each thread: PreparedStatement reuse in loops, a statement prepared and
// closed every iteration, batches (addBatch/executeBatch) in transactions with
// commit and rollback, savepoints, expected errors (22012) and rollback after
// them, doubles (extra_float_digits is sent at startup), and the per-client
// TimeZone / application_name. Every result is compared with the value it
// must have. Last line: RESULT ok ... or RESULT fail ...
//
// Build: javac -cp /usr/share/java/postgresql.jar JdbcSuite.java
// Env: PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE CLIENTS ITERS TARGET PHASES

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

public class JdbcSuite {
    static final String HOST = env("PGHOST", "127.0.0.1");
    static final String PORT = env("PGPORT", "5432");
    static final String USER = env("PGUSER", "postgres");
    static final String PASSWORD = env("PGPASSWORD", "");
    static final String DB = env("PGDATABASE", USER);
    static final int CLIENTS = Integer.parseInt(env("CLIENTS", "40"));
    static final int ITERS = Integer.parseInt(env("ITERS", "50"));
    static final String TARGET = env("TARGET", "?");
    static final String PHASES = env("PHASES", "");
    static final String[] TZS = {"UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Asia/Kolkata", "Etc/GMT+3", "Etc/GMT-14"};
    static final int[] TZ_OFFSETS = {0, 3600, -18000, 32400, 19800, -10800, 50400};

    static final AtomicLong CHECKS = new AtomicLong();
    static final ConcurrentLinkedQueue<String> FAILURES = new ConcurrentLinkedQueue<>();
    static final List<String> PHASES_RUN = new ArrayList<>();

    static String env(String k, String d) {
        String v = System.getenv(k);
        return v == null || v.isEmpty() ? d : v;
    }

    static final class CheckFailed extends RuntimeException {
        CheckFailed(String m) {
            super(m);
        }
    }

    static void check(Object got, Object want, String what) {
        if (got == null ? want != null : !got.equals(want)) {
            throw new CheckFailed(what + ": got " + got + ", want " + want);
        }
        CHECKS.incrementAndGet();
    }

    static Connection connect(String appName, Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", USER);
        p.setProperty("password", PASSWORD);
        p.setProperty("ApplicationName", appName);
        p.putAll(extra);
        return DriverManager.getConnection("jdbc:postgresql://" + HOST + ":" + PORT + "/" + DB, p);
    }

    static long one(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            if (!rs.next()) throw new CheckFailed("no row");
            long v = rs.getLong(1);
            if (rs.next()) throw new CheckFailed("more than one row");
            return v;
        }
    }

    static String oneString(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }

    static void expectSqlState(SQLException e, String state, String what) {
        check(e.getSQLState(), state, what + " SQLSTATE");
    }

    static void client(String phase, int cid, Properties props, int iters) throws Exception {
        String app = "jdbc-" + phase + "-" + cid;
        try (Connection c = connect(app, props)) {
            int tzIdx = cid % TZS.length;
            String startupTz = oneString(c, "SHOW TimeZone");
            String tz = startupTz;
            boolean setsTz = cid % 2 == 0;
            if (setsTz) {
                tz = TZS[tzIdx];
                try (Statement st = c.createStatement()) {
                    st.execute("SET TimeZone = '" + tz + "'");
                }
            }
            c.setAutoCommit(true);
            try (PreparedStatement add = c.prepareStatement("SELECT ?::int + ?::int");
                 PreparedStatement text = c.prepareStatement("SELECT ? || ':' || ?::text");
                 PreparedStatement series = c.prepareStatement("SELECT g, g * ? FROM generate_series(1, ?) g");
                 PreparedStatement dbl = c.prepareStatement("SELECT ?::float8 * 3, ?::numeric(20,4)");
                 PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_items (phase, client_id, i, j, val) VALUES (?, ?, ?, ?, ?)");
                 PreparedStatement count = c.prepareStatement("SELECT count(*) FROM jdbc_items WHERE phase = ? AND client_id = ? AND j BETWEEN 0 AND 3");
                 PreparedStatement countJ = c.prepareStatement("SELECT count(*) FROM jdbc_items WHERE phase = ? AND client_id = ? AND j = ?");
                 PreparedStatement div = c.prepareStatement("SELECT 1 / ?::int");
                 PreparedStatement ret = c.prepareStatement("INSERT INTO jdbc_items (phase, client_id, i, j, val) VALUES (?, ?, ?, 100, 'r') RETURNING i * 2, val")) {
                for (int i = 0; i < iters; i++) {
                    add.setInt(1, i);
                    add.setInt(2, cid);
                    check(one(add), (long) (i + cid), "add");
                    text.setString(1, "c" + cid);
                    text.setInt(2, i);
                    try (ResultSet rs = text.executeQuery()) {
                        rs.next();
                        check(rs.getString(1), "c" + cid + ":" + i, "text");
                    }
                    int n = i % 5 + 1;
                    series.setInt(1, cid);
                    series.setInt(2, n);
                    try (ResultSet rs = series.executeQuery()) {
                        int g = 0;
                        while (rs.next()) {
                            g++;
                            check(rs.getInt(1), g, "series g");
                            check(rs.getInt(2), g * cid, "series g*cid");
                        }
                        check(g, n, "series row count");
                    }
                    double x = 0.1 * (i + 1) + cid / 7.0;
                    dbl.setDouble(1, x);
                    dbl.setString(2, "12345.6789");
                    try (ResultSet rs = dbl.executeQuery()) {
                        rs.next();
                        check(rs.getDouble(1), x * 3, "float8 round trip");
                        check(rs.getBigDecimal(2).toPlainString(), "12345.6789", "numeric");
                    }
                    // Prepared and closed every iteration; the driver caches or Closes it.
                    try (PreparedStatement tmp = c.prepareStatement("SELECT ?::int * " + (i % 6 + 1))) {
                        tmp.setInt(1, cid);
                        check(one(tmp), (long) cid * (i % 6 + 1), "statement prepared per iteration");
                    }

                    // A transaction with a batch.
                    c.setAutoCommit(false);
                    for (int j = 0; j < 4; j++) {
                        ins.setString(1, phase);
                        ins.setInt(2, cid);
                        ins.setInt(3, i);
                        ins.setInt(4, j);
                        ins.setString(5, "v" + cid + "-" + i + "-" + j);
                        ins.addBatch();
                    }
                    int[] counts = ins.executeBatch();
                    check(counts.length, 4, "batch update counts");
                    for (int u : counts) check(u, 1, "batch update count");
                    count.setString(1, phase);
                    count.setInt(2, cid);
                    check(one(count), (long) (i + 1) * 4, "count in transaction");
                    c.commit();

                    if (i % 5 == 0) {
                        ins.setString(1, phase);
                        ins.setInt(2, cid);
                        ins.setInt(3, i);
                        ins.setInt(4, -1);
                        ins.setString(5, "rolled back");
                        ins.addBatch();
                        ins.addBatch();
                        ins.executeBatch();
                        countJ.setString(1, phase);
                        countJ.setInt(2, cid);
                        countJ.setInt(3, -1);
                        check(one(countJ), 2L, "uncommitted rows visible");
                        c.rollback();
                        check(one(countJ), 0L, "rolled-back rows gone");
                        c.commit();
                    }

                    if (i % 10 == 4) {
                        // Savepoints.
                        ins.setString(1, phase);
                        ins.setInt(2, cid);
                        ins.setInt(3, i);
                        ins.setInt(4, -3);
                        ins.setString(5, "kept");
                        ins.executeUpdate();
                        Savepoint sp = c.setSavepoint();
                        ins.setInt(4, -4);
                        ins.setString(5, "undone");
                        ins.executeUpdate();
                        c.rollback(sp);
                        c.commit();
                        countJ.setString(1, phase);
                        countJ.setInt(2, cid);
                        countJ.setInt(3, -3);
                        check(one(countJ), (long) (i / 10 + 1), "row before savepoint kept");
                        countJ.setInt(3, -4);
                        check(one(countJ), 0L, "row after savepoint undone");
                        c.commit();
                    }

                    if (i % 10 == 7) {
                        // An error in a transaction, then rollback; then one in a batch.
                        ins.setString(1, phase);
                        ins.setInt(2, cid);
                        ins.setInt(3, i);
                        ins.setInt(4, -2);
                        ins.setString(5, "x");
                        ins.executeUpdate();
                        div.setInt(1, 0);
                        try {
                            one(div);
                            throw new CheckFailed("1/0 did not fail");
                        } catch (SQLException e) {
                            expectSqlState(e, "22012", "1/0");
                        }
                        try {
                            one(add);
                            throw new CheckFailed("a query in an aborted transaction did not fail");
                        } catch (SQLException e) {
                            expectSqlState(e, "25P02", "aborted transaction");
                        }
                        c.rollback();
                        countJ.setString(1, phase);
                        countJ.setInt(2, cid);
                        countJ.setInt(3, -2);
                        check(one(countJ), 0L, "row of failed transaction gone");
                        div.setInt(1, 1);
                        check(one(div), 1L, "div after the error");
                        c.commit();
                        try (PreparedStatement bad = c.prepareStatement("INSERT INTO jdbc_items (phase, client_id, i, j, val) VALUES (?, ?, ?, 1 / ?, 'b')")) {
                            for (int k = 1; k >= 0; k--) {
                                bad.setString(1, phase);
                                bad.setInt(2, cid);
                                bad.setInt(3, i);
                                bad.setInt(4, k);
                                bad.addBatch();
                            }
                            bad.executeBatch();
                            throw new CheckFailed("batch with 1/0 did not fail");
                        } catch (BatchUpdateException e) {
                            expectSqlState(e, "22012", "batch with 1/0");
                        }
                        c.rollback();
                        check(one(countJ), 0L, "rows of failed batch gone");
                        c.commit();
                    }
                    c.setAutoCommit(true);

                    if (i % 10 == 9) {
                        ret.setString(1, phase);
                        ret.setInt(2, cid);
                        ret.setInt(3, i);
                        try (ResultSet rs = ret.executeQuery()) {
                            rs.next();
                            check(rs.getInt(1), i * 2, "RETURNING");
                            check(rs.getString(2), "r", "RETURNING text");
                        }
                        check(oneString(c, "SHOW TimeZone"), tz, "TimeZone");
                        if (setsTz) {
                            check(oneString(c, "SELECT extract(timezone from '2024-01-15 12:00:00+00'::timestamptz)::int"),
                                  String.valueOf(TZ_OFFSETS[tzIdx]), "TimeZone offset");
                        }
                        check(oneString(c, "SHOW application_name"), app, "application_name");
                        check(oneString(c, "SHOW DateStyle"), "ISO, MDY", "DateStyle");
                    }
                }
                try (PreparedStatement fin = c.prepareStatement(
                        "SELECT count(*), sum(i), count(*) FILTER (WHERE val <> 'v' || client_id || '-' || i || '-' || j) FROM jdbc_items WHERE phase = ? AND client_id = ? AND j BETWEEN 0 AND 3")) {
                    fin.setString(1, phase);
                    fin.setInt(2, cid);
                    try (ResultSet rs = fin.executeQuery()) {
                        rs.next();
                        check(rs.getLong(1), (long) iters * 4, "final row count");
                        check(rs.getLong(2), 4L * iters * (iters - 1) / 2, "final sum");
                        check(rs.getLong(3), 0L, "final rows with a wrong value");
                    }
                }
            }
        }
    }

    static void phase(String name, Properties props, int iters) throws InterruptedException {
        if (!PHASES.isEmpty() && !List.of(PHASES.split(",")).contains(name)) return;
        long t0 = System.nanoTime();
        CyclicBarrier barrier = new CyclicBarrier(CLIENTS);
        List<Thread> threads = new ArrayList<>();
        int before = FAILURES.size();
        for (int cid = 0; cid < CLIENTS; cid++) {
            final int id = cid;
            Thread t = new Thread(() -> {
                try {
                    barrier.await(60, TimeUnit.SECONDS);
                    client(name, id, props, iters);
                } catch (Throwable e) {
                    String msg = "[" + name + "] client " + id + ": " + e.getClass().getSimpleName() + ": " + e.getMessage();
                    if (e instanceof SQLException) msg += " (SQLSTATE " + ((SQLException) e).getSQLState() + ")";
                    FAILURES.add(msg);
                    System.out.println("FAIL " + msg);
                }
            }, name + "-" + cid);
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) t.join();
        System.out.printf("phase %s: %d clients, %d failed clients, %.1fs%n", name, CLIENTS, FAILURES.size() - before, (System.nanoTime() - t0) / 1e9);
        PHASES_RUN.add(name);
    }

    static Properties props(String... kv) {
        Properties p = new Properties();
        for (int i = 0; i < kv.length; i += 2) p.setProperty(kv[i], kv[i + 1]);
        return p;
    }

    public static void main(String[] args) throws Exception {
        long t0 = System.nanoTime();
        try (Connection c = connect("jdbc-setup", new Properties()); Statement st = c.createStatement()) {
            st.execute("DROP TABLE IF EXISTS jdbc_items");
            st.execute("CREATE TABLE jdbc_items (phase text NOT NULL, client_id int NOT NULL, i int NOT NULL, j int NOT NULL, val text NOT NULL)");
        } catch (SQLException e) {
            System.out.println("RESULT fail setup: " + e.getMessage() + " (SQLSTATE " + e.getSQLState() + ")");
            System.exit(1);
        }
        phase("threshold-1", props("prepareThreshold", "1"), ITERS);
        phase("threshold-neg1", props("prepareThreshold", "-1"), Math.max(10, ITERS / 2));
        phase("small-cache", props("prepareThreshold", "1", "preparedStatementCacheQueries", "3"), Math.max(10, ITERS / 2));
        double secs = (System.nanoTime() - t0) / 1e9;
        if (!FAILURES.isEmpty()) {
            System.out.println(FAILURES.size() + " client failure(s); first ones:");
            FAILURES.stream().limit(10).forEach(f -> System.out.println("  " + f));
            String first = FAILURES.peek();
            System.out.printf("RESULT fail %d client failure(s), %d checks ok, via %s, %.1fs: %s%n", FAILURES.size(), CHECKS.get(), TARGET, secs,
                    first.length() > 300 ? first.substring(0, 300) : first);
            System.exit(1);
        }
        System.out.printf("RESULT ok %d checks, %d clients x %d iterations, phases %s, via %s, %.1fs%n", CHECKS.get(), CLIENTS, ITERS,
                String.join("+", PHASES_RUN), TARGET, secs);
        System.exit(0);
    }
}
