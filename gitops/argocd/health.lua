-- Argo CD health of a Wharf Domain, Repository or UpstreamPolicy, read the way kstatus reads
-- it: a status older than the spec says nothing yet; Stalled means a person must act; Ready
-- means serving. Argo CD runs this with the object as the global `obj` and takes the returned
-- table's `status` and `message`. Written for Lua 5.1 (Argo CD's gopher-lua) and later, with
-- the base library only: Argo CD opens no `string` or `math` for scripts from argocd-cm.

-- Reasons the operator gives when only a change to some object can help. It reports these
-- with Stalled=True as well; the list keeps Ready=False from reading as progress should a
-- status carry the reason alone.
local terminal_reasons = {
  InvalidSpec = true,
  NameConflict = true,
  NamespaceNotAdmitted = true,
  UpstreamNotFound = true,
  UpstreamCycle = true,
  UnknownExternalConnection = true,
  TargetNotFound = true,
  DomainInvalid = true,
  DomainNotFound = true,
  DomainDeleting = true,
  SecretNotFound = true,
  StorageNotShared = true,
}

local function condition(status, type_name)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, candidate in ipairs(status.conditions) do
    if candidate.type == type_name then
      return candidate
    end
  end
  return nil
end

local function describe(found, fallback)
  if found.message ~= nil and found.message ~= "" then
    if found.reason ~= nil and found.reason ~= "" then
      return found.reason .. ": " .. found.message
    end
    return found.message
  end
  if found.reason ~= nil and found.reason ~= "" then
    return found.reason
  end
  return fallback
end

local function health(object)
  local status = object.status
  local ready = condition(status, "Ready")
  if ready == nil then
    return { status = "Progressing", message = "Waiting for the Wharf operator to report status" }
  end

  local generation = object.metadata and object.metadata.generation
  local observed = status.observedGeneration
  if observed == nil then
    observed = ready.observedGeneration
  end
  if generation ~= nil and (observed == nil or observed < generation) then
    return {
      status = "Progressing",
      message = "Waiting for the Wharf operator to observe generation " .. generation,
    }
  end

  local stalled = condition(status, "Stalled")
  if stalled ~= nil and stalled.status == "True" then
    return { status = "Degraded", message = describe(stalled, "Stalled") }
  end
  local reconciling = condition(status, "Reconciling")
  if reconciling ~= nil and reconciling.status == "True" then
    return { status = "Progressing", message = describe(reconciling, "Reconciling") }
  end
  if ready.status == "True" then
    return { status = "Healthy", message = describe(ready, "Ready") }
  end
  if ready.status == "False" and terminal_reasons[ready.reason] then
    return { status = "Degraded", message = describe(ready, "Not ready") }
  end
  return { status = "Progressing", message = describe(ready, "Not ready yet") }
end

return health(obj)
