# Installed by the guardlab pod image recipe (manifests/image/recipe.yaml).
# Jupyter's terminals start login shells, and Debian's /etc/profile resets PATH: put the notebook's
# Python environment first again, as the Jupyter Docker Stacks image has it.
case ":$PATH:" in
  *:/opt/venv/bin:*) ;;
  *) PATH="/opt/venv/bin:$PATH"; export PATH ;;
esac
