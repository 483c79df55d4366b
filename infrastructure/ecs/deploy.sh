#!/usr/bin/env bash
# deploy.sh REGION STACK: build the five images, push them to the stack's ECR repositories and
# deploy strangler on ECS with CloudFormation, as the original tutorial's deploy script did,
# with AWS CLI v2. Run from anywhere inside the repository; needs aws (v2), docker with buildx
# and git. Stacks: STACK (cluster.yaml), STACK-monolith, STACK-users, STACK-threads,
# STACK-posts (service.yaml) and STACK-proxy (proxy.yaml).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: infrastructure/ecs/deploy.sh REGION STACK

Builds and pushes the images (tagged with the git commit), then creates or updates the
CloudFormation stacks STACK, STACK-{monolith,users,threads,posts} and STACK-proxy in REGION,
and prints the URL of the load balancer. routes.toml goes to the SSM parameter
/strangler/STACK/routes.toml the first time only; afterwards change traffic with
`aws ssm put-parameter --overwrite` (see infrastructure/README.md).

Environment: CERTIFICATE_ARN (optional) adds an HTTPS listener with that ACM certificate.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac
if [ $# -ne 2 ]; then
  usage >&2
  exit 2
fi
region=$1
stack=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

for tool in aws docker git; do
  command -v "$tool" >/dev/null || { echo "deploy.sh: $tool is not installed" >&2; exit 1; }
done
case "$(aws --version 2>&1)" in
  aws-cli/2.*) ;;
  *) echo "deploy.sh: needs AWS CLI v2 (aws --version says: $(aws --version 2>&1))" >&2; exit 1 ;;
esac

tag=$(git rev-parse --short=12 HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  tag="$tag-dirty-$(date +%s)"
fi

cfn_deploy() { # STACK_NAME TEMPLATE KEY=VALUE...
  local name=$1 template=$2
  shift 2
  echo "==> stack $name ($template)"
  aws cloudformation deploy --region "$region" --stack-name "$name" \
    --template-file "$here/$template" --capabilities CAPABILITY_IAM \
    --no-fail-on-empty-changeset --parameter-overrides "$@"
}

output() { # OUTPUT_KEY
  aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}

# 1. Network, cluster, load balancer, repositories.
cfn_deploy "$stack" cluster.yaml "CertificateArn=${CERTIFICATE_ARN:-}"

# 2. Images: one build stage shared by five targets, pushed to the stack's repositories.
account=$(aws sts get-caller-identity --query Account --output text)
registry="$account.dkr.ecr.$region.amazonaws.com"
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"

declare -A image
for pair in monolith:Monolith users-service:Users threads-service:Threads posts-service:Posts strangler-proxy:Proxy; do
  binary=${pair%%:*}
  repository=$(output "${pair#*:}RepositoryUri")
  image[$binary]="$repository:$tag"
  echo "==> image ${image[$binary]}"
  docker build --platform linux/amd64 -f infrastructure/docker/Dockerfile --target "$binary" \
    -t "${image[$binary]}" .
  docker push "${image[$binary]}"
done

# 3. The route table, once: after this the parameter is the operators' to change.
parameter="/strangler/$stack/routes.toml"
if aws ssm get-parameter --region "$region" --name "$parameter" >/dev/null 2>&1; then
  echo "==> $parameter exists; leaving the live route table alone"
else
  echo "==> $parameter from infrastructure/ecs/routes.toml"
  if command -v cargo >/dev/null; then
    cargo run --quiet --locked -p strangler-proxy -- check "$here/routes.toml"
  fi
  aws ssm put-parameter --region "$region" --name "$parameter" --type String \
    --tier Intelligent-Tiering --value "file://$here/routes.toml" >/dev/null
fi

# 4. The backends, then the proxy in front of them.
for pair in monolith:monolith users:users-service threads:threads-service posts:posts-service; do
  service=${pair%%:*}
  cfn_deploy "$stack-$service" service.yaml "ClusterStack=$stack" "Service=$service" \
    "ImageUri=${image[${pair#*:}]}"
done
cfn_deploy "$stack-proxy" proxy.yaml "ClusterStack=$stack" "ImageUri=${image[strangler-proxy]}"

echo "==> strangler is up: $(output Url)"
