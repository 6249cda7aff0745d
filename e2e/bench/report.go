package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// result is what a run found, as -json prints it.
type result struct {
	Driver      driverMemory `json:"driver"`
	Ops         []opResult   `json:"ops"`
	SetupErrors []string     `json:"setupErrors,omitempty"`
	NotMeasured []string     `json:"notMeasured,omitempty"`
}

// driverMemory is the driver process's memory at idle and over the run.
type driverMemory struct {
	PID  int    `json:"pid,omitempty"`
	Idle memory `json:"idle"` // after start-up and a first Probe
	End  memory `json:"end"`  // after the run; Peak is the run's peak
}

type opResult struct {
	Op          string `json:"op"`
	Concurrency int    `json:"concurrency"`
	Driver      *stats `json:"driver,omitempty"`
	Floor       *stats `json:"floor,omitempty"`
	// P50Ratio is the driver's p50 over the floor's.
	P50Ratio float64 `json:"p50Ratio,omitempty"`
}

func (b *bench) result(mem driverMemory) result {
	res := result{Driver: mem, SetupErrors: b.setupErrs, NotMeasured: b.notMeasured}
	for _, r := range b.rows {
		o := opResult{Op: r.op, Concurrency: r.conc}
		if r.driver.calls > 0 {
			s := r.driver.stats()
			o.Driver = &s
		}
		if r.floor.calls > 0 {
			s := r.floor.stats()
			o.Floor = &s
		}
		if o.Driver != nil && o.Floor != nil && o.Floor.P50Ms > 0 {
			o.P50Ratio = o.Driver.P50Ms / o.Floor.P50Ms
		}
		res.Ops = append(res.Ops, o)
	}
	return res
}

// failedAt reports whether any driver call at concurrency conc failed.
func (r result) failedAt(conc int) bool {
	for _, o := range r.Ops {
		if o.Concurrency == conc && o.Driver != nil && len(o.Driver.Errors) > 0 {
			return true
		}
	}
	return false
}

func (r result) write(w io.Writer, asJSON bool) error {
	if asJSON {
		return r.writeJSON(w)
	}
	return r.writeTable(w)
}

func (r result) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// writeTable prints a line per side of each operation, the ratio on the
// driver's; floor steps are lines of their own.
func (r result) writeTable(w io.Writer) error {
	lines := [][]string{{"operation", "conc", "side", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms", "ops/s", "p50 ratio", "errors"}}
	for _, o := range r.Ops {
		ratio := "-"
		if o.P50Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", o.P50Ratio)
		}
		for _, side := range []struct {
			name string
			s    *stats
		}{{"pelagic", o.Driver}, {"floor", o.Floor}} {
			if side.s == nil {
				continue
			}
			s := side.s
			lines = append(lines, []string{o.Op, strconv.Itoa(o.Concurrency), side.name, strconv.Itoa(s.Calls),
				msText(s.OK, s.P50Ms), msText(s.OK, s.P90Ms), msText(s.OK, s.P99Ms), msText(s.OK, s.MaxMs),
				opsText(s.OpsPerSec), ratio, errorsText(s.Errors)})
			ratio = ""
		}
	}
	if _, err := io.WriteString(w, alignColumns(lines, 3)); err != nil {
		return err
	}
	r.writeNotes(w)
	return nil
}

// alignColumns lays lines out in columns, the first left ones aligned
// left and the others right.
func alignColumns(lines [][]string, left int) string {
	var width []int
	for _, l := range lines {
		for c, cell := range l {
			if c == len(width) {
				width = append(width, 0)
			}
			width[c] = max(width[c], len(cell))
		}
	}
	var sb strings.Builder
	for _, l := range lines {
		for c, cell := range l {
			pad := strings.Repeat(" ", width[c]-len(cell))
			if c < left {
				sb.WriteString(cell + pad)
			} else {
				sb.WriteString(pad + cell)
			}
			if c < len(l)-1 {
				sb.WriteString("  ")
			}
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

// writeNotes prints memory, the errors' messages and what was not measured.
func (r result) writeNotes(w io.Writer) {
	if r.Driver.PID != 0 {
		idle, end := r.Driver.Idle, r.Driver.End
		fmt.Fprintf(w, "\ndriver RSS: idle %s (anonymous %s, file-backed %s), after the run %s (anonymous %s), peak %s\n",
			mib(idle.RSS), mib(idle.Anon), mib(idle.File), mib(end.RSS), mib(end.Anon), mib(end.Peak))
	}
	for _, o := range r.Ops {
		for _, side := range []struct {
			name string
			s    *stats
		}{{"pelagic", o.Driver}, {"floor", o.Floor}} {
			if side.s != nil && len(side.s.ErrorText) > 0 {
				fmt.Fprintf(w, "errors of %s %s at concurrency %d:\n  %s\n", side.name, o.Op, o.Concurrency,
					strings.Join(side.s.ErrorText, "\n  "))
			}
		}
	}
	for _, e := range r.SetupErrors {
		fmt.Fprintf(w, "set-up or clean-up error (not measured): %s\n", e)
	}
	for _, n := range r.NotMeasured {
		fmt.Fprintf(w, "not measured: %s\n", n)
	}
}

func msText(ok int, v float64) string {
	if ok == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func opsText(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func errorsText(errs map[string]int) string {
	if len(errs) == 0 {
		return "-"
	}
	var parts []string
	for _, code := range slices.Sorted(maps.Keys(errs)) {
		parts = append(parts, fmt.Sprintf("%s:%d", code, errs[code]))
	}
	return strings.Join(parts, " ")
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
