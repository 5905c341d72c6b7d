<#
.SYNOPSIS
    Enrol a Windows training host: install, update or remove the mqfleet agent as a Scheduled Task.

.DESCRIPTION
    Writes the agent's config (agent.env, readable by SYSTEM and Administrators only) and copies the
    TLS files next to it, runs `mqfleet agent selftest` with exactly that configuration, and only then
    registers a Scheduled Task that starts the agent from the venv at boot, as SYSTEM (or -User),
    restarting it on failure. -Uninstall removes the task and the config. -DryRun changes nothing and
    prints the task definition (XML) it would register, which is also how the tests read it.

    A Scheduled Task, not a Windows service: python.exe is not a service binary, and a task needs no
    wrapper (nssm, pywin32) on the host. The task stops the agent with a console close event, which
    the agent treats like SIGTERM (it hands running jobs back).

    The machine owner's policy (hours, when_busy, on_yield, nice, memory cap) goes in agent.toml next to
    agent.env: a commented copy of agent.toml.example, never rewritten once there. -Owner names the account
    that may pause the agent (`mqfleet agent pause`): the work dir, where the agent keeps the switch's key
    (owner.key), is readable by SYSTEM, Administrators, the task's user and that account only.

.EXAMPLE
    .\install-agent.ps1 -Broker mqtts://pi.lan:8883 -HostId win-gpu -Ca ca.crt -Cert win-gpu.crt -Key win-gpu.key -Slots 1 -Repo C:\train
#>
[CmdletBinding()]
param(
    [string]$Broker = "",
    [string]$HostId = "",
    [string]$Ca = "",
    [string]$Cert = "",
    [string]$Key = "",
    [ValidateRange(1, 256)][int]$Slots = 1,
    [string]$Repo = "C:\mqfleet\repo",
    [string]$WorkDir = "C:\ProgramData\mqfleet\work",
    [string]$LogFile = "C:\ProgramData\mqfleet\agent.log",
    [string]$Venv = "C:\mqfleet\.venv",
    [string]$Prefix = "mqfleet",
    [string]$ConfigDir = "C:\ProgramData\mqfleet",
    [string]$User = "SYSTEM",
    [string]$Owner = "",
    [switch]$Force,
    [switch]$SkipSelftest,
    [switch]$Uninstall,
    [switch]$DryRun
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = "Stop"

$TaskName = "mqfleet-agent"
$EnvFile = Join-Path $ConfigDir "agent.env"
$OwnerPolicy = Join-Path $ConfigDir "agent.toml"
$TlsDir = Join-Path $ConfigDir "tls"
$Mqfleet = Join-Path $Venv "Scripts\mqfleet.exe"
# Restart on failure: Task Scheduler retries a failed start this many times, this far apart.
$RestartCount = 999
$RestartInterval = "PT1M"

function Say([string]$Message) { Write-Host "install-agent: $Message" }
function Fail([string]$Message) { Write-Error "install-agent: error: $Message"; exit 2 }

function Protect-File([string]$Path) {
    # The equivalent of chmod 600: no inherited ACEs; only SYSTEM, Administrators (and the task user) read it.
    $acl = New-Object System.Security.AccessControl.FileSecurity
    $acl.SetAccessRuleProtection($true, $false)
    $readers = @("NT AUTHORITY\SYSTEM", "BUILTIN\Administrators")
    if ($script:Principal -ne "S-1-5-18") { $readers += $script:Principal }
    foreach ($who in $readers) {
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule($who, "FullControl", "Allow")
        $acl.AddAccessRule($rule)
    }
    Set-Acl -Path $Path -AclObject $acl
}

function Protect-WorkDir([string]$Path) {
    # Inherited by what the agent writes there (owner.key above all): SYSTEM, Administrators, the task user
    # and the owner (-Owner) only, where ProgramData would let every user read.
    $acl = New-Object System.Security.AccessControl.DirectorySecurity
    $acl.SetAccessRuleProtection($true, $false)
    $who = @("NT AUTHORITY\SYSTEM", "BUILTIN\Administrators")
    if ($script:Principal -ne "S-1-5-18") { $who += $script:Principal }
    if ($Owner) { $who += $Owner }
    foreach ($name in $who) {
        $rights = if ($name -eq $Owner) { "ReadAndExecute" } else { "FullControl" }
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule($name, $rights, "ContainerInherit,ObjectInherit", "None", "Allow")
        $acl.AddAccessRule($rule)
    }
    Set-Acl -Path $Path -AclObject $acl
}

function ConvertTo-XmlText([string]$Text) { [System.Security.SecurityElement]::Escape($Text) }

function Get-TaskXml {
    # Task Scheduler 1.4 schema; everything the task needs is in this one document.
    $command = ConvertTo-XmlText $Mqfleet
    # A task has no journald: the agent writes its own rotating log file (docs/OPERATIONS.md, "Logs").
    $arguments = ConvertTo-XmlText "agent --slots $Slots --repo `"$Repo`" --work-dir `"$WorkDir`" --log-file `"$LogFile`" --config `"$OwnerPolicy`""
    $workdir = ConvertTo-XmlText $ConfigDir
    $principal = ConvertTo-XmlText $script:Principal
    $logon = if ($script:Principal -eq "S-1-5-18") { "<UserId>S-1-5-18</UserId><RunLevel>HighestAvailable</RunLevel>" } else { "<UserId>$principal</UserId><LogonType>Password</LogonType><RunLevel>LeastPrivilege</RunLevel>" }
    return @"
<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.4" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>mqfleet agent $(ConvertTo-XmlText $HostId): trains jobs for the fleet</Description>
    <URI>\$TaskName</URI>
  </RegistrationInfo>
  <Triggers>
    <BootTrigger>
      <Enabled>true</Enabled>
      <Delay>PT30S</Delay>
    </BootTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      $logon
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>7</Priority>
    <RestartOnFailure>
      <Interval>$RestartInterval</Interval>
      <Count>$RestartCount</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>$command</Command>
      <Arguments>$arguments</Arguments>
      <WorkingDirectory>$workdir</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"@
}

function Get-EnvText {
    $lines = @(
        "# mqfleet agent settings, written by install-agent.ps1; readable by SYSTEM and Administrators only.",
        "MQFLEET_HOST_ID=$HostId",
        "MQFLEET_BROKER=$Broker",
        "MQFLEET_CA=$(if ($Ca) { Join-Path $TlsDir 'ca.crt' })",
        "MQFLEET_CERT=$(if ($Cert) { Join-Path $TlsDir 'agent.crt' })",
        "MQFLEET_KEY=$(if ($Key) { Join-Path $TlsDir 'agent.key' })",
        "MQFLEET_PREFIX=$Prefix",
        "MQFLEET_WORK_DIR=$WorkDir"
    )
    return ($lines -join "`r`n") + "`r`n"
}

function Import-EnvFile([string]$Path) {
    # The agent reads MQFLEET_* from its environment; the task sets them machine-wide for its process.
    foreach ($line in Get-Content -LiteralPath $Path) {
        if ($line -match '^\s*#' -or $line -notmatch '=') { continue }
        $name, $value = $line -split '=', 2
        [Environment]::SetEnvironmentVariable($name.Trim(), $value.Trim(), "Process")
    }
}

function Set-MachineEnvironment([string]$Path) {
    # A task has no EnvironmentFile: the values go to machine-scope variables the agent process inherits.
    foreach ($line in Get-Content -LiteralPath $Path) {
        if ($line -match '^\s*#' -or $line -notmatch '=') { continue }
        $name, $value = $line -split '=', 2
        [Environment]::SetEnvironmentVariable($name.Trim(), $value.Trim(), "Machine")
    }
}

function Invoke-Uninstall {
    if ($DryRun) {
        Say "would unregister task $TaskName and remove $EnvFile, $TlsDir"
        return
    }
    $task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($null -ne $task) {
        Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
        Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
    }
    foreach ($name in @("MQFLEET_HOST_ID", "MQFLEET_BROKER", "MQFLEET_CA", "MQFLEET_CERT", "MQFLEET_KEY", "MQFLEET_PREFIX", "MQFLEET_WORK_DIR")) {
        [Environment]::SetEnvironmentVariable($name, $null, "Machine")
    }
    Remove-Item -LiteralPath $EnvFile -Force -ErrorAction SilentlyContinue
    Remove-Item -LiteralPath $TlsDir -Recurse -Force -ErrorAction SilentlyContinue
    Say "agent uninstalled (kept $WorkDir)"
}

function Invoke-Install {
    if (-not $Broker) { Fail "-Broker URL is required" }
    if (-not $HostId) { Fail "-HostId is required" }
    if ($Broker -notmatch '^mqtts?://') { Fail "-Broker must be an mqtt:// or mqtts:// URL" }
    if ($HostId -notmatch '^[A-Za-z0-9._-]+$') { Fail "-HostId: only letters, digits and . _ - (it is the certificate CN)" }
    if ($Broker -like "mqtts://*" -and (-not $Ca -or -not $Cert -or -not $Key)) { Fail "an mqtts:// broker needs -Ca, -Cert and -Key" }
    foreach ($file in @($Ca, $Cert, $Key)) {
        if ($file -and -not (Test-Path -LiteralPath $file -PathType Leaf)) { Fail "$file not found" }
    }

    if ($DryRun) {
        Say "would write $EnvFile and copy the TLS files to $TlsDir (SYSTEM and Administrators only)"
        Write-Output (Get-EnvText)
        Say "would run: $Mqfleet agent --slots $Slots --repo $Repo selftest"
        Say "would register task $TaskName with this definition:"
        Write-Output (Get-TaskXml)
        return
    }

    if (-not (Test-Path -LiteralPath $Mqfleet)) { Fail "$Mqfleet not found: py -m venv $Venv; $Venv\Scripts\pip install mqfleet[train] (or pass -Venv)" }
    New-Item -ItemType Directory -Force -Path $ConfigDir, $TlsDir, $WorkDir | Out-Null
    Protect-WorkDir $WorkDir
    if (Test-Path -LiteralPath $OwnerPolicy) {
        Say "kept $OwnerPolicy (the owner's policy file)"
    } else {
        Copy-Item -LiteralPath (Join-Path $PSScriptRoot "agent.toml.example") -Destination $OwnerPolicy
    }
    if ((Test-Path -LiteralPath $EnvFile) -and -not $Force) {
        Say "kept $EnvFile and $TlsDir; -Force rewrites them (e.g. to rotate certificates)"
    } else {
        foreach ($pair in @(@($Ca, "ca.crt"), @($Cert, "agent.crt"), @($Key, "agent.key"))) {
            if (-not $pair[0]) { continue }
            $target = Join-Path $TlsDir $pair[1]
            Copy-Item -LiteralPath $pair[0] -Destination $target -Force
            Protect-File $target
        }
        Set-Content -LiteralPath $EnvFile -Value (Get-EnvText) -NoNewline -Encoding ascii
        Protect-File $EnvFile
    }

    if ($SkipSelftest) {
        Say "selftest skipped (-SkipSelftest)"
    } else {
        Import-EnvFile $EnvFile
        & $Mqfleet agent --slots $Slots --repo $Repo selftest
        if ($LASTEXITCODE -ne 0) { Fail "selftest failed: the task was NOT registered. Fix what the table says, then rerun with -Force." }
    }

    Set-MachineEnvironment $EnvFile
    $existing = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($null -ne $existing) {
        Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
        Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
    }
    if ($script:Principal -eq "S-1-5-18") {
        Register-ScheduledTask -TaskName $TaskName -Xml (Get-TaskXml) | Out-Null
    } else {
        $credential = Get-Credential -UserName $script:Principal -Message "Password of the account the mqfleet agent runs as"
        Register-ScheduledTask -TaskName $TaskName -Xml (Get-TaskXml) -User $script:Principal -Password $credential.GetNetworkCredential().Password | Out-Null
    }
    Start-ScheduledTask -TaskName $TaskName
    Say "agent $HostId installed: task $TaskName, config $EnvFile"
}

# SYSTEM by its well-known SID, so the task definition does not depend on the system's language.
$script:Principal = if ($User -eq "SYSTEM") { "S-1-5-18" } else { $User }
if ($Uninstall) { Invoke-Uninstall } else { Invoke-Install }
