package ctl

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// Completion follows the protocol kubectl plugins use: the shell (or
// kubectl, through a kubectl_complete-pelagic executable) runs
// "__complete WORDS... PARTIAL" and reads one candidate a line, then
// ":DIRECTIVE" (4: no file completion).
const noFileComp = 4

func runComplete(_ context.Context, t Tool, _ *options, args []string) error {
	for _, c := range completions(args) {
		fmt.Fprintln(t.Stdout, c)
	}
	fmt.Fprintf(t.Stdout, ":%d\n", noFileComp)
	return nil
}

// completions offers the next words of a command line: command words, then
// the command's flags; volumes are not guessed (that would need Ceph).
func completions(args []string) []string {
	partial := ""
	if len(args) > 0 {
		partial, args = args[len(args)-1], args[:len(args)-1]
	}
	var words []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			words = append(words, a)
		}
	}
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if strings.HasPrefix(s, partial) && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	if strings.HasPrefix(partial, "-") {
		for name := range globalFlags {
			if len(name) > 1 {
				add("--" + name)
			}
		}
		if c, _, err := findCommand(words); err == nil || c != nil {
			for _, f := range c.flags {
				add("--" + f)
			}
		}
		sort.Strings(out)
		return out
	}
	for _, c := range commands() {
		if c.hidden || len(c.words) <= len(words) {
			continue
		}
		if strings.Join(c.words[:len(words)], " ") == strings.Join(words, " ") {
			add(c.words[len(words)])
		}
	}
	if len(words) > 0 && words[0] == "completion" {
		for _, sh := range []string{"bash", "zsh", "fish"} {
			add(sh)
		}
	}
	sort.Strings(out)
	return out
}

func runCompletion(_ context.Context, t Tool, _ *options, args []string) error {
	prog := strings.ReplaceAll(t.name(), " ", "-")
	if prog == "kubectl-pelagic" {
		// kubectl completes plugins itself, through kubectl_complete-pelagic.
		fmt.Fprintf(t.Stdout, "#!/bin/sh\n# install as kubectl_complete-pelagic on PATH\nexec kubectl-pelagic __complete \"$@\"\n")
		return nil
	}
	switch args[0] {
	case "bash":
		fmt.Fprintf(t.Stdout, `# %[1]s bash completion: source <(%[1]s completion bash)
_%[2]s() {
  local IFS=$'\n' cur=${COMP_WORDS[COMP_CWORD]}
  COMPREPLY=($(%[1]s __complete "${COMP_WORDS[@]:1:COMP_CWORD-1}" "$cur" 2>/dev/null | grep -v '^:'))
}
complete -F _%[2]s %[1]s
`, prog, strings.ReplaceAll(prog, "-", "_"))
	case "zsh":
		fmt.Fprintf(t.Stdout, `#compdef %[1]s
# %[1]s zsh completion: source <(%[1]s completion zsh)
_%[2]s() {
  local -a c
  c=(${(f)"$(%[1]s __complete ${words[2,CURRENT-1]} ${words[CURRENT]} 2>/dev/null | grep -v '^:')"})
  compadd -a c
}
compdef _%[2]s %[1]s
`, prog, strings.ReplaceAll(prog, "-", "_"))
	case "fish":
		fmt.Fprintf(t.Stdout, "# %[1]s fish completion: %[1]s completion fish | source\n"+
			"complete -c %[1]s -f -a '(%[1]s __complete (commandline -opc)[2..-1] (commandline -ct) 2>/dev/null | string match -v \":*\")'\n",
			prog)
	default:
		return usagef("completion for %q: choose bash, zsh or fish", args[0])
	}
	return nil
}
