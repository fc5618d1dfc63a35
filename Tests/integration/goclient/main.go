// A Go client as an application writes it (database/sql), for the transaction-mode tests, on
// lib/pq or pgx (v4, through its database/sql driver; its connection string chooses named
// prepared statements, the default, `statement_cache_mode=describe` or
// `prefer_simple_protocol=true`). lib/pq runs every query with parameters as Parse+Describe+Sync
// of the unnamed statement, then Bind+Execute+Sync in a second round trip, which a pooler may
// serve on another connection; pgx prepares named statements the same way. The program checks
// its own answers and that every row it reads is its tenant's; it prints what failed and exits 1.
//
//	go run main.go -driver postgres|pgx -dsn '...' -tenant <uuid> -n 40
package main

import (
	"database/sql"
	"flag"
	"fmt"
	"os"
	"sync"

	_ "github.com/jackc/pgx/v4/stdlib"
	_ "github.com/lib/pq"
)

func main() {
	driver := flag.String("driver", "postgres", "postgres (lib/pq) or pgx")
	dsn := flag.String("dsn", "", "connection string")
	tenant := flag.String("tenant", "", "the tenant id every row read must have")
	n := flag.Int("n", 40, "iterations per goroutine")
	workers := flag.Int("workers", 3, "goroutines (and connections)")
	prepare := flag.Bool("prepare", true, "also run a statement of database/sql's Prepare")
	flag.Parse()

	db, err := sql.Open(*driver, *dsn)
	if err != nil {
		fail("open: %v", err)
	}
	db.SetMaxOpenConns(*workers)
	defer db.Close()

	var wg sync.WaitGroup
	errs := make(chan error, *workers)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			if err := work(db, w, *n, *tenant, *prepare); err != nil {
				errs <- fmt.Errorf("worker %d: %w", w, err)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fail("%v", err)
	}
	fmt.Println("ok")
}

func work(db *sql.DB, w, n int, tenant string, prepare bool) error {
	var stmt *sql.Stmt
	if prepare {
		var err error
		if stmt, err = db.Prepare("SELECT $1::text || '!'"); err != nil { // a named statement
			return fmt.Errorf("prepare: %w", err)
		}
		defer stmt.Close()
	}
	for i := 0; i < n; i++ {
		k := w*1000 + i
		// Parse+Describe+Sync, then Bind+Execute+Sync: two round trips outside a transaction
		var doubled int
		if err := db.QueryRow("SELECT $1::int * 2", k).Scan(&doubled); err != nil || doubled != 2*k {
			return fmt.Errorf("iteration %d: SELECT $1::int * 2 = %d, %v", i, doubled, err)
		}
		rows, err := db.Query("SELECT tenant_id::text, title FROM todos WHERE title <> $1", "none")
		if err != nil {
			return fmt.Errorf("iteration %d: todos: %w", i, err)
		}
		count := 0
		for rows.Next() {
			var t, title string
			if err := rows.Scan(&t, &title); err != nil {
				rows.Close()
				return err
			}
			if t != tenant {
				rows.Close()
				return fmt.Errorf("iteration %d: a row of tenant %s (%q) read by a client of %s", i, t, title, tenant)
			}
			count++
		}
		rows.Close()
		if err := rows.Err(); err != nil || count == 0 {
			return fmt.Errorf("iteration %d: %d rows of todos, %v", i, count, err)
		}
		if stmt != nil {
			var got string
			if err := stmt.QueryRow(fmt.Sprint(k)).Scan(&got); err != nil || got != fmt.Sprintf("%d!", k) {
				return fmt.Errorf("iteration %d: prepared statement gave %q, %v", i, got, err)
			}
		}
		if i%4 == 0 {
			tx, err := db.Begin()
			if err != nil {
				return err
			}
			var setting string
			if err := tx.QueryRow("SELECT current_setting($1)", "nile.tenant_id").Scan(&setting); err != nil || setting != tenant {
				tx.Rollback()
				return fmt.Errorf("iteration %d: in a transaction nile.tenant_id = %q, %v", i, setting, err)
			}
			if err := tx.Commit(); err != nil {
				return err
			}
		}
	}
	return nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
