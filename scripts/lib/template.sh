# Sourced by scripts/demo.sh and scripts/symbol-order.sh: the node configuration both render
# from examples/node.template.yml (the template the tests and the chaos suite render too).

# render_node_template OUT: fills the template's ${NAME} placeholders from the environment
# (an unset one is empty) into OUT; fails naming OUT when a placeholder is left.
render_node_template() {
  perl -ne 'if (!$body) { next if /^#/; $body = 1 } s/\$\{(\w+)\}/exists $ENV{$1} ? $ENV{$1} : ""/ge; print' \
    examples/node.template.yml >"$1"
  if grep -q '\${' "$1"; then
    echo "unfilled placeholder in $1" >&2
    return 1
  fi
}
